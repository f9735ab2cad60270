import Foundation
import GeoGrid
import Pyramid
import Raster

/// Builds shards for one worker: a quadtree walk over the shard that reads blocks of
/// `blockTiles`×`blockTiles` tiles at the deepest level, encodes them, and halves them into
/// their parent, so memory is a few blocks per level whatever the shard or input size, and each
/// source window is decoded once.
final class ShardBuilder {
    struct Result {
        var summary: ShardSummary?
        var pixelsRead: Int
    }

    let tms: TileMatrixSet
    let band: ShardScheme.Band
    let format: TileFormat
    let quality: Int
    let nearestOverviews: Bool
    let epsg: Int
    let reader: LeafReader
    /// Largest block handled at once, in tiles per side.
    let blockTiles: Int
    private let codec: JPEGCodec
    private var canvases: [Int: Canvas] = [:]
    private let scratch = UnsafeMutablePointer<UInt8>.allocate(capacity: 256 * 256 * 4)
    private let bits = UnsafeMutablePointer<UInt8>.allocate(capacity: 256 * 256 / 8)
    private var writer: ShardWriter?
    private var pixelsRead = 0

    static let defaultBlockTiles = 8

    init(
        tms: TileMatrixSet, band: ShardScheme.Band, format: TileFormat, quality: Int, reader: LeafReader,
        overviewResampling: Resampling = .average, blockTiles: Int = ShardBuilder.defaultBlockTiles
    ) throws {
        nearestOverviews = overviewResampling == .nearest
        self.tms = tms
        self.band = band
        self.format = format
        self.quality = quality
        self.reader = reader
        self.blockTiles = blockTiles
        guard let epsg = tms.epsg else { throw RasterError("grid \(tms.id) has no EPSG code for GeoTIFF keys") }
        self.epsg = epsg
        codec = try JPEGCodec()
    }

    deinit {
        scratch.deallocate()
        bits.deallocate()
    }

    /// Builds the shard at `shard` (a tile at the band's top level) into `path`.
    func build(shard: TileCoordinate, path: String) throws -> Result {
        let box = tms.bounds(of: shard)
        let deepest = tms.tileMatrices[band.deepest]
        let geometry = ShardGeometry(
            originX: box.minX, originY: box.maxY, resolution: deepest.cellSize, levelCount: band.levelCount,
            tileSize: deepest.tileWidth, epsg: epsg)
        let w = try ShardWriter(path: path, geometry: geometry, format: format)
        writer = w
        pixelsRead = 0
        defer { writer = nil }
        try reader.begin(shard: box)
        _ = try node(z: band.top, col: shard.col, row: shard.row, tiles: 1, shard: shard, depth: 0)
        return Result(summary: try w.finish(), pixelsRead: pixelsRead)
    }

    private func canvas(depth: Int, side: Int) -> Canvas {
        if let c = canvases[depth], c.side == side { return c }
        let c = Canvas(side: side)
        canvases[depth] = c
        return c
    }

    /// Produces the `tiles`×`tiles` block at level `z` starting at (col, row), writes its tiles,
    /// and returns the canvas holding it, or nil when the block is empty.
    private func node(z: Int, col: Int, row: Int, tiles: Int, shard: TileCoordinate, depth: Int) throws -> Canvas? {
        let range = TileRange(z: z, minCol: col, minRow: row, maxCol: col + tiles - 1, maxRow: row + tiles - 1)
        guard reader.mayHaveData(range) else { return nil }
        let side = tiles * 256
        let out = canvas(depth: depth, side: side)
        if z == band.deepest {
            out.clear()
            guard try reader.read(range, into: out) else { return nil }
            pixelsRead += side * side
        } else if tiles * 2 <= blockTiles {
            // The whole block below fits in one canvas: read it and halve it.
            guard
                let child = try node(
                    z: z + 1, col: col * 2, row: row * 2, tiles: tiles * 2, shard: shard, depth: depth + 1)
            else { return nil }
            PixelOps.downsample(
                child.pixels, srcStride: child.stride, into: out.pixels, dstStride: out.stride, width: side,
                height: side)
        } else {
            // Four children, each halved into its quadrant.
            var any = false
            let half = side / 2
            for q in 0..<4 {
                let qx = q & 1
                let qy = q >> 1
                let child = try node(
                    z: z + 1, col: col * 2 + qx * tiles, row: row * 2 + qy * tiles, tiles: tiles, shard: shard,
                    depth: depth + 1)
                if let child {
                    PixelOps.downsample(
                        child.pixels, srcStride: child.stride,
                        into: out.pixels + qy * half * out.stride + qx * half * 4, dstStride: out.stride, width: half,
                        height: half, nearest: nearestOverviews)
                    any = true
                } else {
                    out.clear(x: qx * half, y: qy * half, size: half)
                }
            }
            guard any else { return nil }
        }
        try encode(out, range: range, shard: shard)
        return out
    }

    private func encode(_ c: Canvas, range: TileRange, shard: TileCoordinate) throws {
        guard let writer else { return }
        let up = range.z - band.top
        let overview = band.deepest - range.z
        for t in range.tiles {
            let p = c.pixels + (t.row - range.minRow) * 256 * c.stride + (t.col - range.minCol) * 256 * 4
            let valid = PixelOps.validCount(p, stride: c.stride, size: 256)
            if valid == 0 { continue }
            let lc = t.col - (shard.col << up)
            let lr = t.row - (shard.row << up)
            switch format {
            case .jpeg:
                if valid == 256 * 256 {
                    try codec.encode(rgbx: p, width: 256, height: 256, stride: c.stride, quality: quality) {
                        try writer.add(overview: overview, col: lc, row: lr, tile: $0, mask: nil)
                    }
                } else {
                    PixelOps.prepareEdgeTile(p, stride: c.stride, size: 256, scratch: scratch)
                    PixelOps.maskBits(p, stride: c.stride, size: 256, into: bits)
                    let mask = try Deflate.compress(UnsafeRawBufferPointer(start: bits, count: 8192))
                    try codec.encode(rgbx: scratch, width: 256, height: 256, stride: 1024, quality: quality) { jpeg in
                        try mask.withUnsafeBytes {
                            try writer.add(overview: overview, col: lc, row: lr, tile: jpeg, mask: $0)
                        }
                    }
                }
            case .webp:
                let bytes = try WebPCodec.encode(rgba: p, width: 256, height: 256, stride: c.stride, quality: quality)
                try bytes.withUnsafeBytes { try writer.add(overview: overview, col: lc, row: lr, tile: $0, mask: nil) }
            }
        }
    }
}
