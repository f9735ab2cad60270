import Foundation
import GeoGrid
import Raster
import Synchronization

/// Reads tiles of one pyramid: locates a tile's shard by integer shifts, maps the shard once,
/// and returns the stored bytes, or decodes them (with the mask as alpha) when pixels are needed.
public final class PyramidReader: Sendable {
    public let directory: String
    public let manifest: PyramidManifest
    private let existing: Set<TileCoordinate>
    /// Each shard's CRC-32 (hex) from `pyramid.json`, for tile validators.
    private let shardChecksums: [TileCoordinate: String]
    private let openLimit: Int

    private struct Open {
        var readers: [TileCoordinate: ShardReader] = [:]
        /// Opening order, oldest first: the first to close when the limit is reached.
        var order: [TileCoordinate] = []
        /// Shards that could not be opened, with the reason: not retried, reported once.
        var failed: [TileCoordinate: ShardError] = [:]
    }

    /// Open shards in stripes chosen by shard coordinate, so requests for different shards
    /// never wait on the same lock.
    private final class Stripe: Sendable {
        let open = Mutex(Open())
    }

    private let stripes: [Stripe]
    private static let stripeCount = 64

    /// `openLimit` bounds the shards mapped at once (each mapping also pins its file).
    public init(directory: String, openLimit: Int = 4096) throws {
        self.directory = directory
        self.openLimit = max(1, (openLimit + Self.stripeCount - 1) / Self.stripeCount)
        stripes = (0..<Self.stripeCount).map { _ in Stripe() }
        manifest = try PyramidManifest.load(directory: directory)
        existing = Set(manifest.shards.map(\.coordinate))
        shardChecksums = Dictionary(
            manifest.shards.map { ($0.coordinate, $0.crc32) }, uniquingKeysWith: { a, _ in a })
    }

    /// The shard holding a tile, opened (and mapped) on first use; nil when the pyramid has no
    /// shard there. A shard that cannot be read throws the same error each time, marked `repeated`
    /// after the first, so it is logged once.
    public func shard(for tile: TileCoordinate) throws -> (ShardReader, ShardLocation)? {
        guard let loc = manifest.shardScheme.locate(tile), existing.contains(loc.shard) else { return nil }
        let stripe = stripes[(loc.shard.col &* 31 &+ loc.shard.row &* 17 &+ loc.shard.z) & (Self.stripeCount - 1)]
        let cached: ShardReader? = try stripe.open.withLock { o in
            if var e = o.failed[loc.shard] {
                e.repeated = true
                throw e
            }
            return o.readers[loc.shard]
        }
        if let cached { return (cached, loc) }
        let path = (directory as NSString).appendingPathComponent(ShardScheme.path(of: loc.shard))
        let reader: ShardReader
        do {
            reader = try ShardReader(path: path)
        } catch let e as ShardError {
            stripe.open.withLock { $0.failed[loc.shard] = e }
            throw e
        }
        stripe.open.withLock { o in
            if o.readers[loc.shard] == nil {
                o.readers[loc.shard] = reader
                o.order.append(loc.shard)
                if o.order.count > openLimit {
                    let evicted = o.order.removeFirst()
                    o.readers[evicted] = nil
                }
            }
        }
        return (reader, loc)
    }

    /// Shards currently mapped.
    public var openCount: Int { stripes.reduce(0) { n, s in n + s.open.withLock { $0.readers.count } } }

    /// Calls `body` with the stored bytes of a tile (a complete JPEG or WebP stream) and whether it
    /// has a partial mask; nil when there is no tile. The bytes are valid only inside `body`.
    public func withTileData<R>(
        _ tile: TileCoordinate, _ body: (UnsafeRawBufferPointer, _ masked: Bool) throws -> R
    ) throws -> R? {
        try withTileAndMask(tile) { bytes, mask in try body(bytes, mask != nil) }
    }

    /// Calls `body` with the stored bytes of a tile and its stored mask (DEFLATE-compressed bits,
    /// as `ShardWriter.add` takes it), nil when every pixel is valid; nil when there is no tile.
    public func withTileAndMask<R>(
        _ tile: TileCoordinate, _ body: (UnsafeRawBufferPointer, _ mask: UnsafeRawBufferPointer?) throws -> R
    ) throws -> R? {
        guard let (r, loc) = try shard(for: tile),
            let bytes = try r.tile(overview: loc.overview, col: loc.col, row: loc.row)
        else { return nil }
        let mask = try r.maskTile(overview: loc.overview, col: loc.col, row: loc.row).flatMap {
            $0.elementsEqual(ShardWriter.fullMask) ? nil : $0
        }
        return try withExtendedLifetime(r) { try body(bytes, mask) }
    }

    /// Calls `body` with the stored bytes of a tile and a strong validator for them (the shard's
    /// checksum from `pyramid.json` with the tile's place in it: stable across restarts, new when
    /// the shard is rebuilt with other content); nil when there is no tile. No mask is read: the
    /// serving hot path.
    public func withStoredTile<R>(
        _ tile: TileCoordinate, _ body: (UnsafeRawBufferPointer, _ etag: String) throws -> R
    ) throws -> R? {
        guard let (r, loc) = try shard(for: tile),
            let bytes = try r.tile(overview: loc.overview, col: loc.col, row: loc.row)
        else { return nil }
        let crc = shardChecksums[loc.shard] ?? "0"
        let etag = "\"\(crc)-\(loc.overview)-\(loc.col)-\(loc.row)-\(bytes.count)\""
        return try withExtendedLifetime(r) { try body(bytes, etag) }
    }

    /// A copy of the stored bytes of a tile, nil when there is none.
    public func tileData(_ tile: TileCoordinate) throws -> [UInt8]? {
        try withTileData(tile) { bytes, _ in Array(bytes) }
    }

    /// A tile as RGBA pixels, alpha from the mask (255 where the shard has no mask); nil when absent.
    public func decodeTile(_ tile: TileCoordinate) throws -> [UInt8]? {
        guard let (r, loc) = try shard(for: tile),
            let bytes = try r.tile(overview: loc.overview, col: loc.col, row: loc.row)
        else { return nil }
        let size = manifest.tileSize
        var out = [UInt8](repeating: 255, count: size * size * 4)
        try out.withUnsafeMutableBufferPointer { p in
            switch manifest.format {
            case .jpeg:
                try JPEGCodec().decode(bytes, into: p.baseAddress!, width: size, height: size, stride: size * 4)
                if let mask = try r.maskTile(overview: loc.overview, col: loc.col, row: loc.row) {
                    var bits = [UInt8](repeating: 0, count: size * size / 8)
                    try bits.withUnsafeMutableBytes { try Deflate.decompress(mask, into: $0) }
                    for y in 0..<size {
                        for x in 0..<size {
                            let bit = (bits[y * size / 8 + x / 8] >> (7 - UInt8(x % 8))) & 1
                            p[(y * size + x) * 4 + 3] = bit == 1 ? 255 : 0
                        }
                    }
                }
            case .webp:
                try WebPCodec.decode(bytes, into: p.baseAddress!, width: size, height: size, stride: size * 4)
            }
        }
        return out
    }
}
