import Coverage
import Foundation
import GeoGrid
import Logging
import Metrics
import NIOCore
import Pyramid
import Raster
import Synchronization

/// The encodings a client may ask for.
public enum TileEncoding: String, Sendable, CaseIterable {
    case jpeg, png, webp

    /// From a file extension (`jpg`, `jpeg`, `png`, `webp`).
    public init?(extension ext: Substring) {
        switch ext.lowercased() {
        case "jpg", "jpeg": self = .jpeg
        case "png": self = .png
        case "webp": self = .webp
        default: return nil
        }
    }

    /// From a MIME type (`image/jpeg`, `image/png`, `image/webp`).
    public init?(mimeType: Substring) {
        switch mimeType.lowercased() {
        case "image/jpeg", "image/jpg": self = .jpeg
        case "image/png": self = .png
        case "image/webp": self = .webp
        default: return nil
        }
    }

    public var mimeType: String { "image/\(rawValue)" }
    public var fileExtension: String { self == .jpeg ? "jpg" : rawValue }
}

/// A tile asked for, in grid terms: the one value every tile route (XYZ, WMTS KVP and REST, OGC
/// API Tiles) and the fast lane make of a request.
public struct TileRequest: Sendable, Hashable {
    public var tileset: String
    /// A grid id or IGN's level-limited form `G_a_b`.
    public var grid: String
    public var z: Int
    public var col: Int
    public var row: Int
    public var encoding: TileEncoding
    /// For a layer of vintages: one vintage as written (`2024-05`); nil or `latest` for the
    /// stacked view. For a tileset, nil, `latest` or its own vintage.
    public var vintage: String?

    public init(
        tileset: String, grid: String, z: Int, col: Int, row: Int, encoding: TileEncoding, vintage: String? = nil
    ) {
        self.tileset = tileset
        self.grid = grid
        self.z = z
        self.col = col
        self.row = row
        self.encoding = encoding
        self.vintage = vintage
    }
}

/// A tile ready to send: bytes, type and a strong validator.
public struct TileResponse: Sendable {
    public var bytes: ByteBuffer
    public var mimeType: String
    public var etag: String
    public var cacheControl: String

    public init(bytes: ByteBuffer, mimeType: String, etag: String, cacheControl: String) {
        self.bytes = bytes
        self.mimeType = mimeType
        self.etag = etag
        self.cacheControl = cacheControl
    }
}

/// A tile request resolved against the catalog: its pyramid, the tile in the pyramid's grid, and
/// for the stacked view of a layer the vintages under it.
public struct ResolvedTile: Sendable {
    /// The pyramid read; for a stacked view, its newest vintage on the grid.
    public let pyramid: ServedPyramid
    public let tile: TileCoordinate
    public let encoding: TileEncoding
    /// The stacked view this tile is of; nil for a tileset's (or one vintage's) own tile.
    public let stack: PyramidStack?

    public init(pyramid: ServedPyramid, tile: TileCoordinate, encoding: TileEncoding, stack: PyramidStack? = nil) {
        self.pyramid = pyramid
        self.tile = tile
        self.encoding = encoding
        self.stack = stack
    }
}

/// What the tile chain found for a request.
public enum TileAnswer: Sendable {
    /// The pyramid's own stored stream, to send as it is: read it with ``TileService/read(_:)``
    /// (or, on an event loop, ``TileService/readNow(_:allocator:)``).
    case stored(ResolvedTile)
    /// A tile made for this request (transcoded, clipped).
    case made(TileResponse)
    /// Nothing there (outside the data, or not published): 404 or a blank tile.
    case empty
}

/// Who asks, as far as tiles care.
public enum Viewer: Sendable {
    /// Sees published areas only.
    case anyone
    /// Sees gated tilesets whole (an administrator token).
    case administrator
}

/// Answers tile requests from the catalog through one chain, for the router and the fast lane
/// alike: resolve (tileset, grid incl. `G_a_b`, level, column, row, limits) → publication gate
/// (inside, outside, crossing: clipped) → stored (the shard's byte range as it is) → transcoded
/// (decoded with its mask and encoded again, kept in a byte-bounded LRU) → empty. The common case —
/// a JPEG tile of a JPEG pyramid — is one byte range of a shard read once into the response.
public final class TileService: Sendable {
    public let catalog: PyramidCatalog
    public let settings: ServingSettings
    /// Publication gating of `by-status` tilesets; nil when no coverage database is configured
    /// (such tilesets are then shown to nobody but administrators).
    public let gate: PublicationGate?
    public let logger: Logger
    let cache: ByteLRU<String, TileResponse>
    let cacheHits = Counter(label: "dallage_tile_cache_hits_total")
    let cacheMisses = Counter(label: "dallage_tile_cache_misses_total")
    public let tilesServed = Counter(label: "dallage_tiles_served_total")
    /// Tiles this service answered through the fast lane (also in /healthz; the Prometheus
    /// counter is process-wide): one count per event loop, each added to by its loop alone, summed
    /// when read. One count both loops added to was a cache line they passed to each other on
    /// every tile.
    public var fastLaneAnswers: Int { laneCounts.withLock { $0.reduce(0) { $0 + $1.value.load(ordering: .relaxed) } } }
    private let laneCounts = Mutex<[LaneCount]>([])

    /// A new count of fast-lane answers, for one event loop to add to.
    public func makeLaneCount() -> LaneCount {
        let count = LaneCount()
        laneCounts.withLock { $0.append(count) }
        return count
    }
    private let laterReads = Mutex<(@Sendable (ResolvedTile, TileResponse) -> Void)?>(nil)

    public init(catalog: PyramidCatalog, settings: ServingSettings, gate: PublicationGate? = nil, logger: Logger) {
        self.catalog = catalog
        self.settings = settings
        self.gate = gate
        self.logger = logger
        cache = ByteLRU(capacity: settings.tileCacheBytes)
    }

    /// Who an `Authorization` header says the client is.
    public func viewer(authorization: String?) -> Viewer {
        gate?.coverage.isAdmin(authorization: authorization) == true ? .administrator : .anyone
    }

    /// The pyramid and the levels a grid id allows (`G_a_b` narrows them).
    public func resolve(tileset: String, grid: String, in snapshot: CatalogSnapshot, layerParameter: String = "Layer")
        throws(ServingError) -> (ServedPyramid, ClosedRange<Int>)
    {
        // The common case, a grid id as it is: one dictionary lookup, nothing sorted or copied.
        if let p = snapshot.pyramids[tileset]?[grid] { return (p, p.manifest.minZoom...p.manifest.maxZoom) }
        guard let byGrid = snapshot.pyramids[tileset], !byGrid.isEmpty else {
            throw ServingError(.invalidParameterValue, locator: layerParameter, "unknown layer '\(tileset)'")
        }
        let pyramids = byGrid.values.sorted { $0.grid < $1.grid }
        let parts = grid.split(separator: "_")
        if parts.count >= 3, let a = Int(parts[parts.count - 2]), let b = Int(parts[parts.count - 1]), a <= b {
            let base = parts.dropLast(2).joined(separator: "_")
            if let p = byGrid[base] {
                let lo = max(a, p.manifest.minZoom)
                let hi = min(b, p.manifest.maxZoom)
                if lo <= hi { return (p, lo...hi) }
            }
        }
        throw ServingError(
            .invalidParameterValue, locator: "TileMatrixSet",
            "layer '\(tileset)' has no tile matrix set '\(grid)' (available: \(pyramids.map(\.grid).joined(separator: ", ")))"
        )
    }

    /// The same against the catalog as it is now.
    public func resolve(tileset: String, grid: String, layerParameter: String = "Layer")
        throws(ServingError) -> (ServedPyramid, ClosedRange<Int>)
    {
        try resolve(tileset: tileset, grid: grid, in: catalog.snapshot(), layerParameter: layerParameter)
    }

    /// What a layer name and a `Time` value designate: a tileset (a layer's vintage, or a
    /// tileset itself) or a layer's stacked view. An unknown vintage is an error naming `locator`.
    public func select(_ name: String, vintage: String?, in snapshot: CatalogSnapshot, locator: String = "Time")
        throws(ServingError) -> (tileset: String, layer: ServedLayer?)
    {
        let wanted = vintage.flatMap { $0.isEmpty || $0 == "latest" || $0 == "default" ? nil : $0 }
        if let layer = snapshot.layers[name] {
            guard let wanted else { return (name, layer) }
            guard let tileset = layer.tileset(vintage: wanted) else {
                throw ServingError(
                    .invalidParameterValue, locator: locator,
                    "layer '\(name)' has no vintage '\(wanted)' (\((layer.vintages.map(\.vintage.text) + ["latest"]).joined(separator: ", ")))"
                )
            }
            return (tileset, nil)
        }
        if let wanted, let own = snapshot.pyramids[name]?.values.first?.manifest.vintage?.text, own != wanted {
            throw ServingError(
                .invalidParameterValue, locator: locator, "layer '\(name)' has only the vintage \(own) (or latest)")
        } else if let wanted, snapshot.pyramids[name]?.values.first?.manifest.vintage == nil,
            snapshot.pyramids[name] != nil
        {
            throw ServingError(
                .invalidParameterValue, locator: locator, "layer '\(name)' has no vintages ('\(wanted)' asked)")
        }
        return (name, nil)
    }

    /// A layer's stacked view on a grid (a grid id or `G_a_b`) and the levels allowed.
    public func resolve(stacked layer: ServedLayer, grid: String, vintage tileset: String? = nil)
        throws(ServingError) -> (PyramidStack, ClosedRange<Int>)
    {
        func stack(_ grid: String) -> PyramidStack? {
            tileset.map { layer.alone[grid]?[$0] } ?? layer.stacks[grid]
        }
        if let s = stack(grid) { return (s, s.minZoom...s.maxZoom) }
        let parts = grid.split(separator: "_")
        if parts.count >= 3, let a = Int(parts[parts.count - 2]), let b = Int(parts[parts.count - 1]), a <= b,
            let s = stack(parts.dropLast(2).joined(separator: "_"))
        {
            let lo = max(a, s.minZoom)
            let hi = min(b, s.maxZoom)
            if lo <= hi { return (s, lo...hi) }
        }
        throw ServingError(
            .invalidParameterValue, locator: "TileMatrixSet",
            "layer '\(layer.id)' has no tile matrix set '\(grid)' (available: \(layer.stacks.keys.sorted().joined(separator: ", ")))"
        )
    }

    /// Step one of the chain: the request's pyramid and tile (for a layer of vintages, the chosen
    /// vintage's, or the stacked view). `strictLimits` makes a tile outside the data's limits an
    /// error (WMTS) rather than empty (XYZ).
    public func resolve(_ r: TileRequest, in snapshot: CatalogSnapshot, strictLimits: Bool)
        throws(ServingError) -> ResolvedTile
    {
        // The common case, a tileset without vintages: one dictionary lookup first.
        var tileset = r.tileset
        var stack: PyramidStack?
        let pyramid: ServedPyramid
        let levels: ClosedRange<Int>
        let level: ServedPyramid.Level
        if r.vintage == nil, snapshot.layers.isEmpty || snapshot.pyramids[tileset] != nil {
            (pyramid, levels) = try resolve(tileset: tileset, grid: r.grid, in: snapshot)
        } else {
            let chosen = try select(r.tileset, vintage: r.vintage, in: snapshot)
            tileset = chosen.tileset
            if let layer = chosen.layer {
                let (s, range) = try resolve(stacked: layer, grid: r.grid)
                (stack, pyramid, levels) = (s, s.newest, range)
            } else if let layer = snapshot.layers[r.tileset] {
                // One vintage of a layer: on the layer's levels, upsampled below its own.
                let (s, range) = try resolve(stacked: layer, grid: r.grid, vintage: tileset)
                (stack, pyramid, levels) = (s, s.newest, range)
            } else {
                (pyramid, levels) = try resolve(tileset: tileset, grid: r.grid, in: snapshot)
            }
        }
        // Read from the pyramid's per-level table: this runs for every tile, the fast lane's too.
        guard levels.contains(r.z), let l = stack?.level(r.z) ?? pyramid.level(r.z) else {
            throw ServingError(
                .tileOutOfRange, locator: "TileMatrix",
                "level \(r.z) is outside \(levels.lowerBound)…\(levels.upperBound)")
        }
        level = l
        guard r.col >= 0, r.col < level.width else {
            throw ServingError(
                .tileOutOfRange, locator: "TileCol", "column \(r.col) is outside 0…\(level.width - 1)")
        }
        guard r.row >= 0, r.row < level.height else {
            throw ServingError(
                .tileOutOfRange, locator: "TileRow", "row \(r.row) is outside 0…\(level.height - 1)")
        }
        if strictLimits, let l = level.limits {
            if r.col < l.minCol || r.col > l.maxCol {
                throw ServingError(
                    .tileOutOfRange, locator: "TileCol",
                    "column \(r.col) is outside \(l.minCol)…\(l.maxCol) at level \(r.z)")
            }
            if r.row < l.minRow || r.row > l.maxRow {
                throw ServingError(
                    .tileOutOfRange, locator: "TileRow",
                    "row \(r.row) is outside \(l.minRow)…\(l.maxRow) at level \(r.z)")
            }
        }
        return ResolvedTile(
            pyramid: pyramid, tile: TileCoordinate(z: r.z, col: r.col, row: r.row), encoding: r.encoding, stack: stack)
    }

    /// The rest of the chain: the gate, then the stored stream, a transcoded or clipped tile, or
    /// nothing. With `quick` it stops, returning nil, at the first step that is more than a lookup
    /// (a clip, a transcode, a gate decision not yet known): the fast lane then hands the request
    /// to the router, which runs the same chain whole. `memo` keeps the quick path's gate decisions
    /// between calls.
    public func answer(
        _ t: ResolvedTile, viewer: Viewer, memo: inout PublicationMemo, quick: Bool = false
    ) throws(ServingError) -> TileAnswer? {
        if let stack = t.stack { return try stacked(t, stack, viewer: viewer, memo: &memo, quick: quick) }
        if t.pyramid.gated, viewer != .administrator {
            guard let gate else { return .empty }
            if quick {
                // The lane's variant of the decision below, remembered per block: wholly inside or
                // not the lane's to answer.
                guard gate.isWhollyPublished(t.pyramid, t.tile, memo: &memo) else { return nil }
            } else {
                let decision: PublicationGate.Decision
                let epoch: Int
                do {
                    (decision, epoch) = try gate.decide(t.pyramid, t.tile)
                } catch {
                    logger.error("publication of \(t.pyramid.tileset) \(t.tile): \(error)")
                    throw ServingError(.internal, "the published area cannot be computed")
                }
                switch decision {
                case .outside: return .empty
                case .inside: break
                case .crossing(let published):
                    return try making(t) { try clipped(t, published: published, epoch: epoch) }
                }
            }
        }
        if t.encoding == t.pyramid.storedEncoding { return .stored(t) }
        if quick { return nil }
        return try making(t) { try transcoded(t) }
    }

    /// A tile made from decoded pixels; shard and codec errors said as kinds.
    private func making(_ t: ResolvedTile, _ make: () throws -> TileResponse?) throws(ServingError) -> TileAnswer {
        do {
            return try make().map(TileAnswer.made) ?? .empty
        } catch let e as ShardError {
            report(e)
            throw ServingError(e)
        } catch {
            logger.error("tile \(t.pyramid.tileset)/\(t.pyramid.grid)/\(t.tile): \(error)")
            throw ServingError(.internal, "the tile cannot be decoded")
        }
    }

    /// The whole chain for a request, waiting for the store when it answers later: the tile, nil
    /// when there is none (the caller answers 404 or a blank tile).
    public func tile(_ r: TileRequest, viewer: Viewer, strictLimits: Bool) async throws(ServingError) -> TileResponse? {
        let t = try resolve(r, in: catalog.snapshot(), strictLimits: strictLimits)
        var memo = PublicationMemo()
        let found: TileAnswer?
        if answersLater(t) {
            // Lookups first; decoding (which waits for the store) on a utility-QoS Dispatch thread,
            // not on one of the few cooperative threads that serve every other request (on Linux
            // those are the default-QoS pool, `DispatchQueue.global()`'s).
            if let quick = try answer(t, viewer: viewer, memo: &memo, quick: true) {
                found = quick
            } else {
                let result = await withCheckedContinuation {
                    (done: CheckedContinuation<Result<TileAnswer?, ServingError>, Never>) in
                    DispatchQueue.global(qos: .utility).async {
                        var memo = PublicationMemo()
                        done.resume(
                            returning: Result { () throws(ServingError) -> TileAnswer? in
                                try self.answer(t, viewer: viewer, memo: &memo)
                            })
                    }
                }
                found = try result.get()
            }
        } else {
            found = try answer(t, viewer: viewer, memo: &memo)
        }
        switch found {
        case .stored(let t)?: return try await read(t)
        case .made(let response)?: return response
        case .empty?, nil: return nil
        }
    }

    /// Whether the tile's pyramid (or any vintage under a stacked view) reads over the network.
    private func answersLater(_ t: ResolvedTile) -> Bool {
        t.stack?.pyramids.contains { $0.source.answersLater } ?? t.pyramid.source.answersLater
    }

    /// The stored stream of a tile, waiting for the store when it answers later. A tile that came
    /// later (from an object store) is handed to the observer set with ``onLaterRead(_:)``.
    public func read(_ t: ResolvedTile) async throws(ServingError) -> TileResponse? {
        let read = readNow(t, allocator: Self.allocator)
        guard case .later = read else {
            // Failures of a read at once were reported by `readNow`.
            do { return try await read.value().map { response(t, $0) } } catch { throw ServingError(error) }
        }
        do {
            guard let stored = try await read.value() else { return nil }
            let r = response(t, stored)
            laterReads.withLock { $0 }?(t, r)
            return r
        } catch {
            report(error)
            throw ServingError(error)
        }
    }

    /// Called with every stored tile read later (from an object store) by ``read(_:)``: the server
    /// keeps it where its fast lane finds it, so the next request for it is answered from memory.
    public func onLaterRead(_ observer: @escaping @Sendable (ResolvedTile, TileResponse) -> Void) {
        laterReads.withLock { $0 = observer }
    }

    /// The stored stream of a tile without waiting: read into a buffer of `allocator` at once from
    /// a local store, or a read to await (the caller hands the request on). Failures are logged
    /// here, once per shard.
    public func readNow(_ t: ResolvedTile, allocator: ByteBufferAllocator) -> TileRead<ByteBuffer> {
        let read = t.pyramid.source.storedTile(t.tile) { count, fill -> ByteBuffer in
            var buffer = allocator.buffer(capacity: count)
            try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { p in
                try fill(UnsafeMutableRawBufferPointer(rebasing: p[..<count]))
                return count
            }
            return buffer
        }
        if case .ready(.failure(let e)) = read { report(e) }
        return read
    }

    /// A stored stream as a response.
    public func response(_ t: ResolvedTile, _ stored: StoredBytes<ByteBuffer>) -> TileResponse {
        tilesServed.increment()
        return TileResponse(
            bytes: stored.bytes, mimeType: t.encoding.mimeType, etag: stored.etag,
            cacheControl: settings.cacheControl(for: t.pyramid.tileset))
    }

    /// Logs a shard failure once per shard (the reader marks the later ones `repeated`), whichever
    /// path met it first; a passing one (no descriptor left, an object store's timeout) as a warning.
    public func report(_ e: ShardError) {
        if e.transient {
            // A store's outage is marked `repeated` after its first failure for a while.
            if !e.repeated { logger.warning("cannot read a shard now: \(e)") }
        } else if !e.repeated {
            logger.error("unreadable shard, its tiles fail until it changes in the store: \(e)")
        }
    }

    static let allocator = ByteBufferAllocator()

    /// Another encoding than the stored one: decoded, encoded, kept.
    private func transcoded(_ t: ResolvedTile) throws -> TileResponse? {
        let m = t.pyramid.manifest
        let key =
            "\(t.pyramid.contentKey(of: t.tile) ?? 0)/\(t.tile.z)/\(t.tile.col)/\(t.tile.row).\(t.encoding.rawValue)"
        return try cached(key) {
            guard let rgba = try t.pyramid.source.decodeTile(t.tile) else { return nil }
            let encoded = try Transcoder.encode(rgba: rgba, size: m.tileSize, as: t.encoding, quality: m.quality)
            return made(t, encoded, etag: "\(Self.crc(encoded))-\(t.encoding.rawValue)")
        }
    }

    /// A tile crossing the published boundary: transparent outside (white in JPEG), cached per
    /// publication epoch so a status change never serves an old clip.
    private func clipped(_ t: ResolvedTile, published: Geometry, epoch: Int) throws -> TileResponse? {
        let m = t.pyramid.manifest
        let key =
            "clip/\(epoch)/\(t.pyramid.contentKey(of: t.tile) ?? 0)/\(t.tile.z)/\(t.tile.col)/\(t.tile.row).\(t.encoding.rawValue)"
        return try cached(key) {
            guard var rgba = try t.pyramid.source.decodeTile(t.tile) else { return nil }
            let size = m.tileSize
            try StackedSource.clip(&rgba, to: published, tile: t.tile, in: t.pyramid, size: size)
            guard stride(from: 3, to: rgba.count, by: 4).contains(where: { rgba[$0] > 0 }) else { return nil }
            let encoded = try Transcoder.encode(rgba: rgba, size: size, as: t.encoding, quality: m.quality)
            return made(t, encoded, etag: "\(Self.crc(encoded))-\(t.encoding.rawValue)-clip")
        }
    }

    /// The stacked view of a layer: per pixel the newest visible (published, or any for an
    /// administrator) vintage with data there. When the newest vintage with a tile there covers it
    /// wholly and is not clipped by the gate, its tile is the answer, as stored (or transcoded);
    /// otherwise the vintages are composited newest over oldest, once per content and epoch.
    private func stacked(
        _ t: ResolvedTile, _ stack: PyramidStack, viewer: Viewer, memo: inout PublicationMemo, quick: Bool
    ) throws(ServingError) -> TileAnswer? {
        // One vintage alone (`Time=2021`) at a level it has: its own tile, gated as its own.
        if stack.pyramids.count == 1, let p = stack.pyramids.first, t.tile.z <= p.manifest.maxZoom {
            return try answer(
                ResolvedTile(pyramid: p, tile: t.tile, encoding: t.encoding), viewer: viewer, memo: &memo, quick: quick)
        }
        var layers: [(pyramid: ServedPyramid, clip: Geometry?)] = []
        var epoch = gate?.epoch ?? 0
        for p in stack.pyramids where t.tile.z >= p.manifest.minZoom {
            var clip: Geometry?
            if p.gated, viewer != .administrator {
                guard let gate else { continue }
                if quick {
                    // Unpublished here (a newer tranche not yet out): the older vintages show.
                    switch gate.standing(p, t.tile, memo: &memo) {
                    case .inside?: break
                    case .outside?: continue
                    case .crossing?, nil: return nil
                    }
                } else {
                    do {
                        let (decision, at) = try gate.decide(p, t.tile)
                        epoch = at
                        switch decision {
                        case .outside: continue
                        case .inside: break
                        case .crossing(let published): clip = published
                        }
                    } catch {
                        logger.error("publication of \(p.tileset) \(t.tile): \(error)")
                        throw ServingError(.internal, "the published area cannot be computed")
                    }
                }
            }
            if layers.isEmpty, clip == nil, t.tile.z <= p.manifest.maxZoom {
                // Reading the mask would wait for an object store: not on an event loop.
                if quick && p.source.answersLater { return nil }
                // Still on top: a whole tile here is the answer as it is stored.
                let cover: TileCover
                do {
                    cover = try p.source.cover(t.tile)
                } catch let e as ShardError {
                    report(e)
                    throw ServingError(e)
                } catch {
                    throw ServingError(.internal, "the tile cannot be read")
                }
                switch cover {
                case .absent: continue
                case .full:
                    return try answer(
                        ResolvedTile(pyramid: p, tile: t.tile, encoding: t.encoding), viewer: .administrator,
                        memo: &memo, quick: quick)
                case .partial: break
                }
            }
            if quick { return nil }
            layers.append((p, clip))
        }
        guard !layers.isEmpty else { return .empty }
        let keys = layers.map { l in
            "\(l.pyramid.contentKey(of: StackedSource.source(of: t.tile, in: l.pyramid)) ?? 0)\(l.clip == nil ? "" : "c")"
        }
        let key =
            "stack/\(epoch)/\(keys.joined(separator: ","))/\(t.tile.z)/\(t.tile.col)/\(t.tile.row).\(t.encoding.rawValue)"
        return try making(t) {
            try cached(key) {
                let size = stack.newest.manifest.tileSize
                guard
                    let out = try StackedSource.composite(
                        t.tile, layers.map { StackedSource.Member(pyramid: $0.pyramid, clip: $0.clip) }, size: size)
                else { return nil }
                let encoded = try Transcoder.encode(
                    rgba: out, size: size, as: t.encoding, quality: stack.newest.manifest.quality)
                return TileResponse(
                    bytes: ByteBuffer(bytes: encoded), mimeType: t.encoding.mimeType,
                    etag: "\"\(Self.crc(encoded))-\(t.encoding.rawValue)-stack\"",
                    cacheControl: settings.cacheControl(for: stack.layer))
            }
        }
    }

    /// A made tile from the cache, or made and kept.
    private func cached(_ key: String, _ make: () throws -> TileResponse?) throws -> TileResponse? {
        if let hit = cache.get(key) {
            cacheHits.increment()
            tilesServed.increment()
            return hit
        }
        cacheMisses.increment()
        guard let response = try make() else { return nil }
        cache.set(key, response, cost: response.bytes.readableBytes + key.utf8.count + 64)
        tilesServed.increment()
        return response
    }

    private func made(_ t: ResolvedTile, _ encoded: [UInt8], etag: String) -> TileResponse {
        TileResponse(
            bytes: ByteBuffer(bytes: encoded), mimeType: t.encoding.mimeType, etag: "\"\(etag)\"",
            cacheControl: settings.cacheControl(for: t.pyramid.tileset))
    }

    private static func crc(_ bytes: [UInt8]) -> String {
        String(format: "%08x", bytes.withUnsafeBytes { Deflate.crc32($0) })
    }

    /// A transparent (PNG/WebP) or white (JPEG) tile, for `empty_tile: blank`.
    public func blankTile(_ encoding: TileEncoding, tileset: String) throws -> TileResponse {
        let key = "blank.\(encoding.rawValue)"
        if let hit = cache.get(key) { return hit }
        let rgba = [UInt8](repeating: encoding == .jpeg ? 255 : 0, count: 256 * 256 * 4)
        let bytes = try Transcoder.encode(rgba: rgba, size: 256, as: encoding, quality: 85)
        let r = TileResponse(
            bytes: ByteBuffer(bytes: bytes), mimeType: encoding.mimeType, etag: "\"blank-\(encoding.rawValue)\"",
            cacheControl: settings.cacheControl(for: tileset))
        cache.set(key, r, cost: bytes.count)
        return r
    }
}

/// Encodes decoded RGBA images (transcoded tiles, clipped tiles, WMS maps).
public enum Transcoder {
    /// Encodes `rgba`; JPEG (which has no alpha), and any format when `flattenOver` is given, is
    /// composed over that colour (white by default).
    public static func encode(
        rgba: [UInt8], width: Int, height: Int, as encoding: TileEncoding, quality: Int,
        flattenOver background: (UInt8, UInt8, UInt8)? = nil
    ) throws -> [UInt8] {
        var pixels = rgba
        if let bg = background ?? (encoding == .jpeg ? (255, 255, 255) : nil) {
            let colour = [Int(bg.0), Int(bg.1), Int(bg.2)]
            for i in stride(from: 0, to: width * height * 4, by: 4) where pixels[i + 3] < 255 {
                let a = Int(pixels[i + 3])
                for k in 0..<3 { pixels[i + k] = UInt8((Int(pixels[i + k]) * a + colour[k] * (255 - a)) / 255) }
                pixels[i + 3] = 255
            }
        }
        return try pixels.withUnsafeMutableBufferPointer { p in
            let base = p.baseAddress!
            switch encoding {
            case .png:
                return try PNGCodec.encode(rgba: base, width: width, height: height, stride: width * 4)
            case .webp:
                return try WebPCodec.encode(
                    rgba: base, width: width, height: height, stride: width * 4, quality: quality)
            case .jpeg:
                return try JPEGCodec().encode(
                    rgbx: base, width: width, height: height, stride: width * 4, quality: quality
                ) { Array($0) }
            }
        }
    }

    /// A square tile.
    public static func encode(rgba: [UInt8], size: Int, as encoding: TileEncoding, quality: Int) throws -> [UInt8] {
        try encode(rgba: rgba, width: size, height: size, as: encoding, quality: quality)
    }
}

/// A count one event loop adds to, on a cache line of its own (padding either side).
public final class LaneCount: Sendable {
    private let before: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0)
    public let value = Atomic<Int>(0)
    private let after: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0)
}
