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
    private let shards = Mutex<[TileCoordinate: ShardReader]>([:])

    public init(directory: String) throws {
        self.directory = directory
        manifest = try PyramidManifest.load(directory: directory)
        existing = Set(manifest.shards.map(\.coordinate))
    }

    /// The shard holding a tile, opened (and mapped) on first use.
    public func shard(for tile: TileCoordinate) throws -> (ShardReader, ShardLocation)? {
        guard let loc = manifest.shardScheme.locate(tile), existing.contains(loc.shard) else { return nil }
        if let r = shards.withLock({ $0[loc.shard] }) { return (r, loc) }
        let r = try ShardReader(path: (directory as NSString).appendingPathComponent(ShardScheme.path(of: loc.shard)))
        shards.withLock { $0[loc.shard] = r }
        return (r, loc)
    }

    /// The stored bytes of a tile (a complete JPEG or WebP stream), nil when there is none.
    /// The bytes stay valid while this reader lives.
    public func tileData(_ tile: TileCoordinate) throws -> UnsafeRawBufferPointer? {
        guard let (r, loc) = try shard(for: tile) else { return nil }
        return try r.tile(overview: loc.overview, col: loc.col, row: loc.row)
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
