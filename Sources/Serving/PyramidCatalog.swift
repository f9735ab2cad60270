import Foundation
import GeoGrid
import Logging
import Pyramid
import Synchronization

/// One servable pyramid: its manifest and where its tiles are read.
public final class ServedPyramid: Sendable {
    public let tileset: String
    public let grid: String
    public let source: any PyramidSource
    /// The store's stamp of `pyramid.json` when loaded: a change means a rebuild.
    let stamp: Double
    /// The source's manifest, kept here: read in place, never copied per request.
    public let manifest: PyramidManifest
    /// The encoding of the stored streams.
    public let storedEncoding: TileEncoding
    /// Served only inside published perimeters (`publish: by-status`).
    public let gated: Bool

    /// What the tile chain checks of a level: its matrix size and the data's limits there.
    public struct Level: Sendable {
        public var width: Int
        public var height: Int
        public var limits: PyramidManifest.LevelLimits?
    }
    /// By level number, nil for levels the grid does not have.
    private let levels: [Level?]
    /// Each shard's content key: the same for the same file in every generation that lists it
    /// (a shard is never rewritten under its path), so caches keyed by it survive a rebuild for
    /// every shard it did not touch.
    private let shardKeys: [TileCoordinate: UInt64]

    init(tileset: String, grid: String, source: any PyramidSource, stamp: Double) {
        self.tileset = tileset
        self.grid = grid
        self.source = source
        self.stamp = stamp
        let manifest = source.manifest
        self.manifest = manifest
        storedEncoding = manifest.format == .jpeg ? .jpeg : .webp
        gated = manifest.publish == .byStatus
        levels = manifest.tileMatrixSet.tileMatrices.indices.map { z in
            manifest.tileMatrixSet.matrix(z).map {
                Level(width: $0.matrixWidth, height: $0.matrixHeight, limits: manifest.limits(z: z))
            }
        }
        shardKeys = Dictionary(
            manifest.shards.map { ($0.coordinate, Self.contentKey(tileset, grid, $0)) }, uniquingKeysWith: { a, _ in a }
        )
    }

    /// FNV-1a over the shard's identity: pyramid, file and checksum (64 bits: two different
    /// shards meet on one key for the same tile with odds of 2⁻⁶⁴).
    static func contentKey(_ tileset: String, _ grid: String, _ shard: PyramidManifest.Shard) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "\(tileset)/\(grid)/\(shard.path)#\(shard.crc32)/\(shard.bytes)".utf8 {
            h = (h ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        return h
    }

    /// The content key of the shard holding `tile`; nil when the pyramid has no shard there.
    public func contentKey(of tile: TileCoordinate) -> UInt64? {
        guard let shard = manifest.shardScheme.locate(tile)?.shard else { return nil }
        return shardKeys[shard]
    }

    /// Level `z`'s size and limits; nil when the grid has no such level.
    public func level(_ z: Int) -> Level? { levels.indices.contains(z) ? levels[z] : nil }
}

/// The tilesets sharing a `layer:`: its vintages, and per grid the stacked view of them.
public struct ServedLayer: Sendable {
    public struct Member: Sendable {
        public let vintage: Vintage
        public let tileset: String
    }
    public let id: String
    /// The newest vintage's own title (not its tileset id), else the layer id.
    public let title: String
    /// Newest first.
    public let vintages: [Member]
    /// The stacked view per grid id.
    public let stacks: [String: PyramidStack]
    /// Each vintage alone on the layer's levels, per grid id then tileset: what `Time=<vintage>`
    /// shows (upsampled below the vintage's deepest level, as in the stacked view).
    public let alone: [String: [String: PyramidStack]]

    /// The tileset of a vintage as written (`2024-05`); nil when the layer has none such.
    public func tileset(vintage: String) -> String? { vintages.first { $0.vintage.text == vintage }?.tileset }

    /// The newest vintage begun on or before a day (year·10⁴ + month·10² + day).
    public func vintage(onOrBefore day: Int) -> Member? { vintages.first { $0.vintage.firstDay <= day } }
}

/// One grid of a layer's stacked view: its vintages' pyramids there, newest first; the levels are
/// the union of theirs (a vintage without a level this deep is upsampled from its deepest).
public final class PyramidStack: Sendable {
    public let layer: String
    public let grid: String
    public let pyramids: [ServedPyramid]
    public let minZoom: Int
    public let maxZoom: Int
    private let levels: [ServedPyramid.Level?]

    /// One vintage of `stack` alone, on the stack's levels.
    init(_ pyramid: ServedPyramid, on stack: PyramidStack) {
        layer = stack.layer
        grid = stack.grid
        pyramids = [pyramid]
        minZoom = stack.minZoom
        maxZoom = stack.maxZoom
        levels = stack.levels
    }

    init(layer: String, grid: String, pyramids: [ServedPyramid]) {
        self.layer = layer
        self.grid = grid
        self.pyramids = pyramids
        minZoom = pyramids.map(\.manifest.minZoom).min() ?? 0
        maxZoom = pyramids.map(\.manifest.maxZoom).max() ?? 0
        let count = pyramids.map { $0.manifest.tileMatrixSet.tileMatrices.count }.max() ?? 0
        levels = (0..<count).map { z in
            var merged: ServedPyramid.Level?
            for p in pyramids {
                guard let l = p.level(z) else { continue }
                guard var m = merged else {
                    merged = l
                    continue
                }
                if let a = m.limits, let b = l.limits {
                    m.limits = PyramidManifest.LevelLimits(
                        z: z, minCol: min(a.minCol, b.minCol), maxCol: max(a.maxCol, b.maxCol),
                        minRow: min(a.minRow, b.minRow), maxRow: max(a.maxRow, b.maxRow))
                } else {
                    m.limits = m.limits ?? l.limits
                }
                merged = m
            }
            // Deeper than a vintage goes, it still shows (upsampled) where its deepest level has tiles.
            if var m = merged {
                for p in pyramids where p.manifest.maxZoom < z {
                    guard let deepest = p.manifest.limits(z: p.manifest.maxZoom) else { continue }
                    let k = z - p.manifest.maxZoom
                    let l = PyramidManifest.LevelLimits(
                        z: z, minCol: deepest.minCol << k, maxCol: ((deepest.maxCol + 1) << k) - 1,
                        minRow: deepest.minRow << k, maxRow: ((deepest.maxRow + 1) << k) - 1)
                    m.limits =
                        m.limits.map {
                            PyramidManifest.LevelLimits(
                                z: z, minCol: min($0.minCol, l.minCol), maxCol: max($0.maxCol, l.maxCol),
                                minRow: min($0.minRow, l.minRow), maxRow: max($0.maxRow, l.maxRow))
                        } ?? l
                }
                merged = m
            }
            return merged
        }
    }

    /// Level `z`'s size and the union of the vintages' limits there; nil when no vintage's grid
    /// has the level.
    public func level(_ z: Int) -> ServedPyramid.Level? { levels.indices.contains(z) ? levels[z] : nil }

    /// The newest vintage's manifest: the stack's tile size, encoding and grid.
    public var newest: ServedPyramid { pyramids[0] }

    /// Bounds of all vintages, WGS84.
    public var wgs84Bounds: BoundingBox {
        pyramids.dropFirst().reduce(newest.manifest.wgs84Bounds) { $0.union($1.manifest.wgs84Bounds) }
    }
}

/// The catalog as it was at one moment: the pyramids by tileset and grid, the layers of vintages,
/// and the catalog's version then. Request handlers resolve against a snapshot; the fast lane
/// keeps one per connection and takes a new one when the version moves.
public struct CatalogSnapshot: Sendable {
    public let version: Int
    public let pyramids: [String: [String: ServedPyramid]]
    public let layers: [String: ServedLayer]

    public static let empty = CatalogSnapshot(version: -1, pyramids: [:], layers: [:])
}

/// Every pyramid of the store, rescanned periodically: a pyramid that appears or is rebuilt is
/// served without a restart. Cold start reads only the `pyramid.json` files, never a shard.
public final class PyramidCatalog: Sendable {
    public let store: any PyramidStore
    let openShards: Int
    let logger: Logger
    private let state = Mutex<[String: [String: ServedPyramid]]>([:])
    private let layerState = Mutex<[String: ServedLayer]>([:])
    /// Bumped after every change of `state`: request handlers keep a copy of the map and read this
    /// counter, lock-free, to know when to refresh it.
    private let changes = Atomic<Int>(0)

    public init(store: any PyramidStore, openShards: Int = 4096, logger: Logger) {
        self.store = store
        self.openShards = openShards
        self.logger = logger
        rescan()
    }

    /// The pyramid of `tileset` on `grid`.
    public func pyramid(_ tileset: String, grid: String) -> ServedPyramid? {
        state.withLock { $0[tileset]?[grid] }
    }

    /// The pyramids as they are now, with the change counter.
    public func snapshot() -> CatalogSnapshot {
        let version = changes.load(ordering: .acquiring)
        return CatalogSnapshot(
            version: version, pyramids: state.withLock { $0 }, layers: layerState.withLock { $0 })
    }

    /// The change counter alone: equal to a snapshot's version while that snapshot is current.
    public var version: Int { changes.load(ordering: .acquiring) }

    /// The layers of vintages by id.
    public var layers: [String: ServedLayer] { layerState.withLock { $0 } }

    /// Tileset ids, sorted.
    public var tilesets: [String] { state.withLock { $0.keys.sorted() } }

    /// Pyramids of one tileset by grid id.
    public func pyramids(of tileset: String) -> [ServedPyramid] {
        state.withLock { ($0[tileset] ?? [:]).values.sorted { $0.grid < $1.grid } }
    }

    /// All pyramids, by tileset then grid.
    public var all: [ServedPyramid] {
        state.withLock { s in s.keys.sorted().flatMap { t in (s[t] ?? [:]).values.sorted { $0.grid < $1.grid } } }
    }

    /// Tilesets served only inside published project perimeters (`publish: by-status`).
    public var gatedTilesets: [String] {
        state.withLock { s in
            s.keys.sorted().filter { t in (s[t] ?? [:]).values.contains { $0.manifest.publish == .byStatus } }
        }
    }

    /// Looks for new, rebuilt and removed pyramids.
    public func rescan() {
        let found: [PyramidListing]
        do {
            found = try store.list()
        } catch {
            // A store that cannot be listed now: keep serving what was found before.
            logger.error("cannot list the store \(store.location): \(error)")
            return
        }
        let current = state.withLock { $0 }
        var next: [String: [String: ServedPyramid]] = [:]
        var changed = found.count != current.values.reduce(0) { $0 + $1.count }
        for listing in found {
            let (tileset, grid) = (listing.tileset, listing.grid)
            if let old = current[tileset]?[grid], old.stamp == listing.stamp {
                next[tileset, default: [:]][grid] = old
                continue
            }
            changed = true
            do {
                let source = try store.open(listing, openShards: openShards)
                next[tileset, default: [:]][grid] = ServedPyramid(
                    tileset: tileset, grid: grid, source: source, stamp: listing.stamp)
                logger.info(
                    "\(current[tileset]?[grid] == nil ? "serving" : "reloaded") \(tileset)/\(grid): \(source.manifest.shards.count) shard(s)"
                )
            } catch {
                // A half-written or broken manifest: keep serving the previous version, if any.
                if let old = current[tileset]?[grid] { next[tileset, default: [:]][grid] = old }
                logger.error("cannot load \(tileset)/\(grid)/pyramid.json from \(store.location): \(error)")
            }
        }
        guard changed else { return }
        let layers = Self.layers(of: next, logger: logger)
        state.withLock { $0 = next }
        layerState.withLock { $0 = layers }
        changes.add(1, ordering: .releasing)
    }

    /// The layers the pyramids' manifests declare. A layer whose id is a tileset's, or with one
    /// vintage claimed twice, is not served as a layer (its tilesets still are) and is logged.
    static func layers(of pyramids: [String: [String: ServedPyramid]], logger: Logger) -> [String: ServedLayer] {
        var members: [String: [(Vintage, String)]] = [:]
        for (tileset, byGrid) in pyramids {
            guard let m = byGrid.values.first?.manifest, let layer = m.layer, let vintage = m.vintage else { continue }
            members[layer, default: []].append((vintage, tileset))
        }
        var out: [String: ServedLayer] = [:]
        for (layer, list) in members {
            if pyramids[layer] != nil {
                logger.error(
                    "layer '\(layer)' is not served: a tileset has the same id (layers and tilesets share one namespace)"
                )
                continue
            }
            let sorted = list.sorted { $0.0 != $1.0 ? $0.0 > $1.0 : $0.1 < $1.1 }
            if let dup = zip(sorted, sorted.dropFirst()).first(where: { $0.0.0 == $0.1.0 }) {
                logger.error(
                    "layer '\(layer)' is not served: tilesets '\(dup.1.1)' and '\(dup.0.1)' are both its vintage \(dup.0.0.text)"
                )
                continue
            }
            var stacks: [String: PyramidStack] = [:]
            var alone: [String: [String: PyramidStack]] = [:]
            let grids = Set(sorted.flatMap { pyramids[$0.1]?.keys.map { $0 } ?? [] })
            for grid in grids {
                let ps = sorted.compactMap { pyramids[$0.1]?[grid] }
                let stack = PyramidStack(layer: layer, grid: grid, pyramids: ps)
                stacks[grid] = stack
                alone[grid] = Dictionary(
                    ps.map { ($0.tileset, PyramidStack($0, on: stack)) }, uniquingKeysWith: { a, _ in a })
            }
            let titled = sorted.lazy.compactMap { v in
                pyramids[v.1]?.values.first?.manifest.title.flatMap { $0 == v.1 || $0.isEmpty ? nil : $0 }
            }
            out[layer] = ServedLayer(
                id: layer, title: titled.first ?? layer,
                vintages: sorted.map { ServedLayer.Member(vintage: $0.0, tileset: $0.1) }, stacks: stacks,
                alone: alone)
        }
        return out
    }

    /// Rescans every `interval` seconds until cancelled. Each rescan runs on a utility-QoS Dispatch
    /// thread: it may wait for an object store, and must not hold one of the cooperative threads
    /// meanwhile (on Linux those are the default-QoS pool `DispatchQueue.global()` hands out).
    public func watch(every interval: Double) async {
        let milliseconds = interval.isFinite ? Int(min(max(interval, 0.01), 86_400) * 1000) : 2000
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(milliseconds))
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                DispatchQueue.global(qos: .utility).async {
                    self.rescan()
                    done.resume()
                }
            }
        }
    }
}
