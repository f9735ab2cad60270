import Foundation
import GeoGrid
import Pyramid
import Raster

/// The pixels of a layer's stacked view: per pixel the newest of `members` with data there, each
/// clipped to what the viewer may see of it. Tile routes composite through it; extracts and WMS
/// read it like a pyramid (its tiles are made, never stored).
final class StackedSource: CompositeSource {
    /// One vintage under the view: its pyramid and, when gated, the published area in the
    /// pyramid's CRS (nil: all of it).
    struct Member: @unchecked Sendable {
        let pyramid: ServedPyramid
        let clip: Geometry?
    }

    let members: [Member]
    let manifest: PyramidManifest
    let stack: PyramidStack

    /// The stacked view of `stack` through `members` (newest first, a subset of the stack).
    init(stack: PyramidStack, members: [Member]) {
        self.stack = stack
        self.members = members
        var m = stack.newest.manifest
        m.minZoom = stack.minZoom
        m.maxZoom = stack.maxZoom
        m.levels = (stack.minZoom...stack.maxZoom).compactMap { stack.level($0)?.limits }
        m.bounds = stack.pyramids.dropFirst().reduce(m.bounds) { $0.union($1.manifest.bounds) }
        m.wgs84Bounds = stack.wgs84Bounds
        m.tileset = stack.layer
        m.layer = stack.layer
        m.vintage = nil
        manifest = m
    }

    func storedTile<Bytes: Sendable>(_ tile: TileCoordinate, into allocate: @escaping TileAllocator<Bytes>)
        -> TileRead<Bytes>
    {
        .ready(.success(nil))
    }

    func decodeTile(_ tile: TileCoordinate) throws -> [UInt8]? {
        try Self.composite(tile, members, size: manifest.tileSize)
    }

    func withTileAndMask<R>(
        _ tile: TileCoordinate, _ body: (UnsafeRawBufferPointer, _ mask: UnsafeRawBufferPointer?) throws -> R
    ) throws -> R? { nil }

    func cover(_ tile: TileCoordinate) throws -> TileCover {
        guard let rgba = try decodeTile(tile) else { return .absent }
        return stride(from: 3, to: rgba.count, by: 4).allSatisfy { rgba[$0] == 255 } ? .full : .partial
    }

    /// The union of the members' tiled footprints (Lambert-93), each cut to its published area.
    func tiledFootprint() throws -> Geometry? {
        var union: Geometry?
        for m in members {
            guard var f = try m.pyramid.source.tiledFootprint() else { continue }
            if let clip = m.clip {
                let l93 = try SpatialReference(epsg: 2154)
                let grid = try SpatialReference(m.pyramid.manifest.tileMatrixSet.crs)
                f = try f.intersection(
                    grid.isSame(as: l93) ? clip : clip.transformed(CoordinateTransform(from: grid, to: l93)))
            }
            union = try union.map { try $0.union(f) } ?? f
        }
        return union
    }

    /// A tile of the stacked view: each member's pixels (upsampled from its deepest level when
    /// the tile is deeper, clipped to its published area) fill what the newer ones left empty;
    /// nil when none has data there.
    static func composite(_ tile: TileCoordinate, _ members: [Member], size: Int) throws -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: size * size * 4)
        var missing = size * size
        for m in members where missing > 0 && tile.z >= m.pyramid.manifest.minZoom {
            guard var rgba = try pixels(of: tile, in: m.pyramid, size: size) else { continue }
            if let clip = m.clip { try Self.clip(&rgba, to: clip, tile: tile, in: m.pyramid, size: size) }
            for i in 0..<(size * size) where out[i * 4 + 3] == 0 && rgba[i * 4 + 3] != 0 {
                for k in 0..<4 { out[i * 4 + k] = rgba[i * 4 + k] }
                missing -= 1
            }
        }
        return missing < size * size ? out : nil
    }

    /// The tile of `pyramid` whose pixels show at `tile`: itself, or its ancestor at the
    /// pyramid's deepest level when the tile is deeper.
    static func source(of tile: TileCoordinate, in pyramid: ServedPyramid) -> TileCoordinate {
        tile.z <= pyramid.manifest.maxZoom ? tile : tile.ancestor(levels: tile.z - pyramid.manifest.maxZoom)
    }

    /// A tile's RGBA pixels from a pyramid, upsampled (nearest) from its deepest level when the
    /// tile is deeper; nil when the pyramid has nothing there.
    static func pixels(of tile: TileCoordinate, in pyramid: ServedPyramid, size: Int) throws -> [UInt8]? {
        let from = source(of: tile, in: pyramid)
        guard pyramid.manifest.tileSize == size, let rgba = try pyramid.source.decodeTile(from) else { return nil }
        let k = tile.z - from.z
        guard k > 0 else { return rgba }
        let within = (1 << k) - 1
        let (x0, y0) = ((tile.col & within) * size, (tile.row & within) * size)
        var out = [UInt8](repeating: 0, count: size * size * 4)
        for y in 0..<size {
            let sy = (y0 + y) >> k
            for x in 0..<size {
                let s = (sy * size + ((x0 + x) >> k)) * 4
                let d = (y * size + x) * 4
                for c in 0..<4 { out[d + c] = rgba[s + c] }
            }
        }
        return out
    }

    /// Makes the pixels of a tile outside `published` (in the pyramid's CRS) transparent.
    static func clip(
        _ rgba: inout [UInt8], to published: Geometry, tile: TileCoordinate, in pyramid: ServedPyramid, size: Int
    ) throws {
        let box = pyramid.manifest.tileMatrixSet.bounds(of: tile)
        var inside = [UInt8](repeating: 0, count: size * size)
        try inside.withUnsafeMutableBufferPointer { p in
            try published.rasterize(
                into: p.baseAddress!, width: size, height: size,
                transform: GeoTransform(originX: box.minX, originY: box.maxY, resolution: box.width / Double(size)))
        }
        for i in 0..<(size * size) where inside[i] == 0 { rgba[i * 4 + 3] = 0 }
    }
}
