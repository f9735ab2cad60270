import Coverage
import Foundation
import GeoGrid
import Hummingbird
import Logging
import Metrics
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

/// A tile asked for, in grid terms.
public struct TileRequest: Sendable {
    public var tileset: String
    /// A grid id or IGN's level-limited form `G_a_b`.
    public var grid: String
    public var z: Int
    public var col: Int
    public var row: Int
    public var encoding: TileEncoding

    public init(tileset: String, grid: String, z: Int, col: Int, row: Int, encoding: TileEncoding) {
        self.tileset = tileset
        self.grid = grid
        self.z = z
        self.col = col
        self.row = row
        self.encoding = encoding
    }
}

/// A tile ready to send: bytes, type and a strong validator.
public struct TileResponse: Sendable {
    public var bytes: ByteBuffer
    public var mimeType: String
    public var etag: String
    public var cacheControl: String
}

/// Answers tile requests from the catalog. The common case — a JPEG tile of a JPEG pyramid — is
/// one byte range of a shard read once into the response: no decode, no shared lock. Other
/// encodings decode the stored tile with its mask and re-encode; results stay in a byte-bounded LRU.
public final class TileService: Sendable {
    public let catalog: PyramidCatalog
    public let configuration: ServerConfiguration
    /// Publication gating of `by-status` tilesets; nil when no coverage database is configured
    /// (such tilesets are then shown to nobody but administrators).
    public let gate: PublicationGate?
    let logger: Logger
    let cache: ByteLRU<String, TileResponse>
    let cacheHits = Counter(label: "dallage_tile_cache_hits_total")
    let cacheMisses = Counter(label: "dallage_tile_cache_misses_total")
    let tilesServed = Counter(label: "dallage_tiles_served_total")
    /// Tiles this service answered through the fast lane (also in /healthz; the Prometheus
    /// counter is process-wide).
    let fastLaneAnswers = Atomic<Int>(0)

    public init(
        catalog: PyramidCatalog, configuration: ServerConfiguration, gate: PublicationGate? = nil, logger: Logger
    ) {
        self.catalog = catalog
        self.configuration = configuration
        self.gate = gate
        self.logger = logger
        cache = ByteLRU(capacity: configuration.tileCacheBytes)
    }

    /// True when an `Authorization` header carries an administrator token.
    public func isAdmin(_ authorization: String?) -> Bool {
        gate?.coverage.isAdmin(authorization: authorization) ?? false
    }

    /// The pyramid and the levels a grid id allows (`G_a_b` narrows them).
    public func resolve(tileset: String, grid: String, style: ServiceError.Style, layerParameter: String = "Layer")
        throws(ServiceError) -> (ServedPyramid, ClosedRange<Int>)
    {
        // The common case, a grid id as it is: one dictionary lookup, nothing sorted or copied.
        if let p = catalog.pyramid(tileset, grid: grid) { return (p, p.manifest.minZoom...p.manifest.maxZoom) }
        let pyramids = catalog.pyramids(of: tileset)
        guard !pyramids.isEmpty else {
            throw ServiceError(
                .invalidParameterValue, locator: layerParameter, "unknown layer '\(tileset)'", style: style)
        }
        if let p = pyramids.first(where: { $0.grid == grid }) {
            return (p, p.manifest.minZoom...p.manifest.maxZoom)
        }
        let parts = grid.split(separator: "_")
        if parts.count >= 3, let a = Int(parts[parts.count - 2]), let b = Int(parts[parts.count - 1]), a <= b {
            let base = parts.dropLast(2).joined(separator: "_")
            if let p = pyramids.first(where: { $0.grid == base }) {
                let lo = max(a, p.manifest.minZoom)
                let hi = min(b, p.manifest.maxZoom)
                if lo <= hi { return (p, lo...hi) }
            }
        }
        throw ServiceError(
            .invalidParameterValue, locator: "TileMatrixSet",
            "layer '\(tileset)' has no tile matrix set '\(grid)' (available: \(pyramids.map(\.grid).joined(separator: ", ")))",
            style: style)
    }

    /// The tile, nil when the pyramid has none there (the caller answers 404 or a blank tile).
    /// `strictLimits` makes a tile outside the data's limits an error (WMTS) rather than empty (XYZ).
    public func tile(
        _ r: TileRequest, style: ServiceError.Style, strictLimits: Bool, seesEverything: Bool = false
    ) throws(ServiceError) -> TileResponse? {
        let (pyramid, levels) = try resolve(tileset: r.tileset, grid: r.grid, style: style)
        let m = pyramid.manifest
        guard levels.contains(r.z), let matrix = m.tileMatrixSet.matrix(r.z) else {
            throw ServiceError(
                .tileOutOfRange, locator: "TileMatrix",
                "level \(r.z) is outside \(levels.lowerBound)…\(levels.upperBound)", style: style)
        }
        guard r.col >= 0, r.col < matrix.matrixWidth else {
            throw ServiceError(
                .tileOutOfRange, locator: "TileCol", "column \(r.col) is outside 0…\(matrix.matrixWidth - 1)",
                style: style)
        }
        guard r.row >= 0, r.row < matrix.matrixHeight else {
            throw ServiceError(
                .tileOutOfRange, locator: "TileRow", "row \(r.row) is outside 0…\(matrix.matrixHeight - 1)",
                style: style)
        }
        if strictLimits, let l = m.limits(z: r.z) {
            if r.col < l.minCol || r.col > l.maxCol {
                throw ServiceError(
                    .tileOutOfRange, locator: "TileCol",
                    "column \(r.col) is outside \(l.minCol)…\(l.maxCol) at level \(r.z)",
                    style: style)
            }
            if r.row < l.minRow || r.row > l.maxRow {
                throw ServiceError(
                    .tileOutOfRange, locator: "TileRow",
                    "row \(r.row) is outside \(l.minRow)…\(l.maxRow) at level \(r.z)",
                    style: style)
            }
        }
        let coordinate = TileCoordinate(z: r.z, col: r.col, row: r.row)
        let cacheControl = configuration.cacheControl(for: r.tileset)
        let stored = m.format == .jpeg ? TileEncoding.jpeg : .webp
        do {
            if m.publish == .byStatus, !seesEverything {
                // Publication gating: inside stays zero-copy, outside is empty, crossing is clipped.
                guard let gate else { return nil }
                let (decision, generation) = try gate.decide(
                    tileset: r.tileset, crs: m.tileMatrixSet.crs, tile: m.tileMatrixSet.bounds(of: coordinate))
                switch decision {
                case .outside: return nil
                case .inside: break
                case .crossing(let published):
                    return try clipped(
                        r, pyramid: pyramid, coordinate: coordinate, published: published, generation: generation,
                        cacheControl: cacheControl)
                }
            }
            if r.encoding == stored {
                return try storedTile(pyramid, coordinate, encoding: r.encoding, cacheControl: cacheControl)
            }
            let key = "\(r.tileset)/\(pyramid.grid)/\(pyramid.stamp)/\(r.z)/\(r.col)/\(r.row).\(r.encoding.rawValue)"
            if let hit = cache.get(key) {
                cacheHits.increment()
                tilesServed.increment()
                return hit
            }
            cacheMisses.increment()
            guard let rgba = try pyramid.reader.decodeTile(coordinate) else { return nil }
            let encoded = try Transcoder.encode(rgba: rgba, size: m.tileSize, as: r.encoding, quality: m.quality)
            let etag =
                "\"\(String(format: "%08x", encoded.withUnsafeBytes { Deflate.crc32($0) }))-\(r.encoding.rawValue)\""
            let response = TileResponse(
                bytes: ByteBuffer(bytes: encoded), mimeType: r.encoding.mimeType, etag: etag, cacheControl: cacheControl
            )
            cache.set(key, response, cost: encoded.count + key.utf8.count + 64)
            tilesServed.increment()
            return response
        } catch let e as ShardError {
            report(e)
            if e.transient {
                throw ServiceError(.unavailable, "the server cannot open more files now; try again", style: style)
            }
            throw ServiceError(.noApplicableCode, "the shard holding this tile cannot be read", style: style)
        } catch {
            logger.error("tile \(r.tileset)/\(r.grid)/\(r.z)/\(r.col)/\(r.row): \(error)")
            throw ServiceError(.noApplicableCode, "the tile cannot be decoded", style: style)
        }
    }

    /// Logs a shard failure once per shard (the reader marks the later ones `repeated`), whichever
    /// path met it first.
    func report(_ e: ShardError) {
        if e.transient {
            logger.warning("cannot open a shard now: \(e)")
        } else if !e.repeated {
            logger.error("unreadable shard, its tiles answer 500 until it changes on disk: \(e)")
        }
    }

    /// The hot path: the stored stream as it is, read once from the shard into the response.
    func storedTile(
        _ pyramid: ServedPyramid, _ coordinate: TileCoordinate, encoding: TileEncoding, cacheControl: String
    ) throws -> TileResponse? {
        let read = try pyramid.reader.readStoredTile(coordinate) { count, fill -> ByteBuffer in
            var buffer = Self.allocator.buffer(capacity: count)
            try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { p in
                try fill(UnsafeMutableRawBufferPointer(rebasing: p[..<count]))
                return count
            }
            return buffer
        }
        guard let read else { return nil }
        tilesServed.increment()
        return TileResponse(bytes: read.bytes, mimeType: encoding.mimeType, etag: read.etag, cacheControl: cacheControl)
    }

    static let allocator = ByteBufferAllocator()

    /// Where the tile is when it is a plain stored one that anybody may see — a grid id as it is,
    /// inside the data's limits, the pyramid's own encoding, and for a gated pyramid a tile
    /// `published` says is wholly inside the published area — else nil, and the caller takes the
    /// general path (which also gives every error its proper answer).
    func plainStoredTilePlace(
        _ r: TileRequest, in pyramids: [String: [String: ServedPyramid]], strictLimits: Bool,
        published: (ServedPyramid, TileCoordinate) -> Bool
    ) -> (ServedPyramid, TileCoordinate)? {
        guard let pyramid = pyramids[r.tileset]?[r.grid] else { return nil }
        let m = pyramid.manifest
        guard r.encoding == (m.format == .jpeg ? .jpeg : .webp),
            r.z >= m.minZoom, r.z <= m.maxZoom, let matrix = m.tileMatrixSet.matrix(r.z),
            r.col >= 0, r.col < matrix.matrixWidth, r.row >= 0, r.row < matrix.matrixHeight
        else { return nil }
        if strictLimits, let l = m.limits(z: r.z),
            r.col < l.minCol || r.col > l.maxCol || r.row < l.minRow || r.row > l.maxRow
        {
            return nil
        }
        let coordinate = TileCoordinate(z: r.z, col: r.col, row: r.row)
        if m.publish == .byStatus, !published(pyramid, coordinate) { return nil }
        return (pyramid, coordinate)
    }

    /// A tile crossing the published boundary: transparent outside (white in JPEG), cached per
    /// gate generation so a status change never serves an old clip.
    func clipped(
        _ r: TileRequest, pyramid: ServedPyramid, coordinate: TileCoordinate, published: Geometry, generation: Int,
        cacheControl: String
    ) throws -> TileResponse? {
        let m = pyramid.manifest
        let key =
            "clip/\(generation)/\(r.tileset)/\(pyramid.grid)/\(pyramid.stamp)/\(r.z)/\(r.col)/\(r.row).\(r.encoding.rawValue)"
        if let hit = cache.get(key) {
            cacheHits.increment()
            return hit
        }
        cacheMisses.increment()
        guard var rgba = try pyramid.reader.decodeTile(coordinate) else { return nil }
        let size = m.tileSize
        let box = m.tileMatrixSet.bounds(of: coordinate)
        var inside = [UInt8](repeating: 0, count: size * size)
        try inside.withUnsafeMutableBufferPointer { p in
            try published.rasterize(
                into: p.baseAddress!, width: size, height: size,
                transform: GeoTransform(originX: box.minX, originY: box.maxY, resolution: box.width / Double(size)))
        }
        var any = false
        for i in 0..<(size * size) {
            if inside[i] == 0 { rgba[i * 4 + 3] = 0 } else if rgba[i * 4 + 3] > 0 { any = true }
        }
        guard any else { return nil }
        let encoded = try Transcoder.encode(rgba: rgba, size: size, as: r.encoding, quality: m.quality)
        let crc = encoded.withUnsafeBytes { Deflate.crc32($0) }
        let response = TileResponse(
            bytes: ByteBuffer(bytes: encoded), mimeType: r.encoding.mimeType,
            etag: "\"\(String(format: "%08x", crc))-\(r.encoding.rawValue)-clip\"", cacheControl: cacheControl)
        cache.set(key, response, cost: encoded.count + key.utf8.count + 64)
        return response
    }

    /// A transparent (PNG/WebP) or white (JPEG) tile, for `empty_tile: blank`.
    public func blankTile(_ encoding: TileEncoding, tileset: String) throws -> TileResponse {
        let key = "blank.\(encoding.rawValue)"
        if let hit = cache.get(key) { return hit }
        let rgba = [UInt8](repeating: encoding == .jpeg ? 255 : 0, count: 256 * 256 * 4)
        let bytes = try Transcoder.encode(rgba: rgba, size: 256, as: encoding, quality: 85)
        let r = TileResponse(
            bytes: ByteBuffer(bytes: bytes), mimeType: encoding.mimeType, etag: "\"blank-\(encoding.rawValue)\"",
            cacheControl: configuration.cacheControl(for: tileset))
        cache.set(key, r, cost: bytes.count)
        return r
    }
}

/// Encodes decoded RGBA images (transcoded tiles, clipped tiles, WMS maps).
enum Transcoder {
    /// Encodes `rgba`; JPEG (which has no alpha), and any format when `flattenOver` is given, is
    /// composed over that colour (white by default).
    static func encode(
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
    static func encode(rgba: [UInt8], size: Int, as encoding: TileEncoding, quality: Int) throws -> [UInt8] {
        try encode(rgba: rgba, width: size, height: size, as: encoding, quality: quality)
    }
}
