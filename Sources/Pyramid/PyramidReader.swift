import Foundation
import GeoGrid
import Raster
import Synchronization

/// Reads tiles of one pyramid: locates a tile's shard by integer shifts, opens the shard once,
/// and returns the stored bytes, or decodes them (with the mask as alpha) when pixels are needed.
public final class PyramidReader: Sendable {
    public let directory: String
    public let manifest: PyramidManifest
    /// Each shard's file (relative path) and CRC-32 (hex, for tile validators), from `pyramid.json`.
    private let shards: [TileCoordinate: (path: String, crc32: String)]
    private let openLimit: Int

    private struct Open {
        var readers: [TileCoordinate: ShardReader] = [:]
        /// Opening order, oldest first: the first to close when the limit is reached.
        var order: [TileCoordinate] = []
        /// Shards that could not be read, with the reason and the file as it was then: not
        /// retried until the file changes on disk (repaired, replaced), reported once.
        var failed: [TileCoordinate: (error: ShardError, file: ShardReader.FileID?)] = [:]
    }

    /// Open shards in stripes chosen by shard coordinate, so requests for different shards
    /// never wait on the same lock.
    private final class Stripe: Sendable {
        let open = Mutex(Open())
    }

    private let stripes: [Stripe]
    private static let stripeCount = 64

    /// `openLimit` bounds the shards open at once (each holds a file descriptor).
    public init(directory: String, openLimit: Int = 4096) throws {
        self.directory = directory
        self.openLimit = max(1, (openLimit + Self.stripeCount - 1) / Self.stripeCount)
        stripes = (0..<Self.stripeCount).map { _ in Stripe() }
        manifest = try PyramidManifest.load(directory: directory)
        shards = Dictionary(
            manifest.shards.map { ($0.coordinate, ($0.path, $0.crc32)) }, uniquingKeysWith: { a, _ in a })
    }

    private func stripe(_ shard: TileCoordinate) -> Stripe {
        stripes[(shard.col &* 31 &+ shard.row &* 17 &+ shard.z) & (Self.stripeCount - 1)]
    }

    /// The file of a shard the manifest lists (its path there: generations give rebuilt shards new names).
    private func path(of shard: TileCoordinate) -> String {
        (directory as NSString).appendingPathComponent(shards[shard]?.path ?? ShardScheme.path(of: shard))
    }

    /// The shard holding a tile, opened on first use; nil when the pyramid has no shard there. A
    /// shard that cannot be read throws the same error each time, marked `repeated` after the
    /// first (so it is logged once), until its file changes on disk: then it is opened again.
    public func shard(for tile: TileCoordinate) throws -> (ShardReader, ShardLocation)? {
        guard let loc = manifest.shardScheme.locate(tile), shards[loc.shard] != nil else { return nil }
        let stripe = stripe(loc.shard)
        let cached: ShardReader? = try stripe.open.withLock { o in
            if let f = o.failed[loc.shard] {
                // One stat per request of a broken shard: cheap, and a repair is seen at once.
                guard ShardReader.FileID.of(path: path(of: loc.shard)) != f.file else {
                    var e = f.error
                    e.repeated = true
                    throw e
                }
                o.failed[loc.shard] = nil
            }
            return o.readers[loc.shard]
        }
        if let cached { return (cached, loc) }
        let reader: ShardReader
        do {
            reader = try ShardReader(path: path(of: loc.shard))
        } catch let e as ShardError {
            if !e.transient { failed(loc.shard, e, file: ShardReader.FileID.of(path: path(of: loc.shard))) }
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

    /// Records a shard as unreadable and closes it; returns the error, marked `repeated` when the
    /// failure was already known (another request met it first).
    @discardableResult
    private func failed(_ shard: TileCoordinate, _ error: ShardError, file: ShardReader.FileID?) -> ShardError {
        stripe(shard).open.withLock { o in
            var e = error
            if o.failed[shard] != nil { e.repeated = true }
            o.failed[shard] = (error, file)
            if o.readers.removeValue(forKey: shard) != nil { o.order.removeAll { $0 == shard } }
            return e
        }
    }

    /// Runs `body` on an open shard; a read error marks the shard failed (closing it, so a shard
    /// replaced on disk is opened anew) and is thrown once unmarked, then `repeated`.
    private func reading<R>(
        _ reader: ShardReader, _ loc: ShardLocation, _ body: () throws -> R
    ) throws -> R {
        do {
            return try body()
        } catch let e as ShardError {
            throw failed(loc.shard, e, file: ShardReader.FileID.of(path: reader.path))
        }
    }

    /// Shards currently open.
    public var openCount: Int { stripes.reduce(0) { n, s in n + s.open.withLock { $0.readers.count } } }

    /// Calls `body` with the stored bytes of a tile (a complete JPEG or WebP stream) and whether it
    /// has a partial mask; nil when there is no tile.
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
        guard let (r, loc) = try shard(for: tile) else { return nil }
        let read = try reading(r, loc) { () throws -> ([UInt8], [UInt8]?)? in
            guard let bytes = try r.tile(overview: loc.overview, col: loc.col, row: loc.row) else { return nil }
            let mask = try r.maskTile(overview: loc.overview, col: loc.col, row: loc.row)
            return (bytes, mask)
        }
        guard let (bytes, mask) = read else { return nil }
        return try bytes.withUnsafeBytes { b in
            guard let mask, !mask.elementsEqual(ShardWriter.fullMask) else { return try body(b, nil) }
            return try mask.withUnsafeBytes { try body(b, $0) }
        }
    }

    /// The stored bytes of a tile read into memory `allocate` gives (`count` bytes to fill), with
    /// a strong validator for them (the shard's checksum from `pyramid.json` with the tile's place
    /// in it: stable across restarts, new when the shard is rebuilt with other content); nil when
    /// there is no tile. No mask is read: the serving hot path, one `pread`.
    public func readStoredTile<B>(
        _ tile: TileCoordinate,
        into allocate: (_ count: Int, _ fill: (UnsafeMutableRawBufferPointer) throws -> Void) throws -> B
    ) throws -> (bytes: B, etag: String)? {
        guard let (r, loc) = try shard(for: tile) else { return nil }
        return try reading(r, loc) {
            guard let range = try r.tileRange(overview: loc.overview, col: loc.col, row: loc.row) else { return nil }
            let bytes = try allocate(range.count) { try r.read(at: range.offset, into: $0) }
            let crc = shards[loc.shard]?.crc32 ?? "0"
            return (bytes, "\"\(crc)-\(loc.overview)-\(loc.col)-\(loc.row)-\(range.count)\"")
        }
    }

    /// How much of a tile holds data: one index lookup, and one small read of its mask when the
    /// shard has masks.
    public func cover(_ tile: TileCoordinate) throws -> TileCover {
        guard let (r, loc) = try shard(for: tile) else { return .absent }
        return try reading(r, loc) {
            guard try r.tileRange(overview: loc.overview, col: loc.col, row: loc.row) != nil else { return .absent }
            guard let mask = try r.maskRange(overview: loc.overview, col: loc.col, row: loc.row) else { return .full }
            guard mask.count == ShardWriter.fullMask.count else { return .partial }
            var bytes = [UInt8](repeating: 0, count: mask.count)
            try bytes.withUnsafeMutableBytes { try r.read(at: mask.offset, into: $0) }
            return bytes == ShardWriter.fullMask ? .full : .partial
        }
    }

    /// A copy of the stored bytes of a tile, nil when there is none.
    public func tileData(_ tile: TileCoordinate) throws -> [UInt8]? {
        try withTileData(tile) { bytes, _ in Array(bytes) }
    }

    /// A tile as RGBA pixels, alpha from the mask (255 where the shard has no mask); nil when absent.
    public func decodeTile(_ tile: TileCoordinate) throws -> [UInt8]? {
        guard let (r, loc) = try shard(for: tile) else { return nil }
        let read = try reading(r, loc) { () throws -> ([UInt8], [UInt8]?)? in
            guard let bytes = try r.tile(overview: loc.overview, col: loc.col, row: loc.row) else { return nil }
            return (bytes, try r.maskTile(overview: loc.overview, col: loc.col, row: loc.row))
        }
        guard let (stored, mask) = read else { return nil }
        return try Self.decode(stored, mask: mask, manifest: manifest)
    }

    /// A stored tile (a JPEG or WebP stream) and its stored mask as RGBA pixels, alpha from the
    /// mask (255 where there is none): what every store's `decodeTile` returns.
    public static func decode(_ stored: [UInt8], mask: [UInt8]?, manifest: PyramidManifest) throws -> [UInt8] {
        let size = manifest.tileSize
        var out = [UInt8](repeating: 255, count: size * size * 4)
        try out.withUnsafeMutableBufferPointer { p in
            try stored.withUnsafeBytes { bytes in
                switch manifest.format {
                case .jpeg:
                    try JPEGCodec().decode(bytes, into: p.baseAddress!, width: size, height: size, stride: size * 4)
                    if let mask {
                        var bits = [UInt8](repeating: 0, count: size * size / 8)
                        try mask.withUnsafeBytes { m in
                            try bits.withUnsafeMutableBytes { try Deflate.decompress(m, into: $0) }
                        }
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
        }
        return out
    }
}
