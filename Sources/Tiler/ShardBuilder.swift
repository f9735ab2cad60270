import Foundation
import GeoGrid
import Pyramid
import Raster
import Synchronization

/// Builds shards for one worker: a quadtree walk over the shard that reads blocks of
/// `blockTiles`×`blockTiles` tiles at the deepest level, encodes them, and halves them into
/// their parent, so memory is a few blocks per level whatever the shard or input size, and each
/// source window is decoded once.
final class ShardBuilder {
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
    /// The job being built: its previous version and change area, its tallies.
    private var job: ShardJob?
    private let stored: StoredTileDecoder
    private var pixelsRead = 0
    private var currentShard: TileCoordinate?

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
        stored = try StoredTileDecoder(format: format)
    }

    deinit {
        scratch.deallocate()
        bits.deallocate()
    }

    /// Parts per side a shard of `band` is cut into at the band's top level + 4 (16×16 tiles
    /// there): 4, so that 16 separate jobs of 4×4 tiles and a merge share a shard between cores
    /// even when a tranche touches a small part of it; 1 (built whole) when the band is too short.
    static func partsPerSide(_ band: ShardScheme.Band) -> Int { band.deepest - band.top >= 4 ? 4 : 1 }

    /// The ranges a build of `shard` from sources reads at the band's deepest level (in parts
    /// when the band is cut in parts, as the tiler builds it), as ``node`` walks them down when
    /// nothing is kept from a previous version.
    static func deepestReads(
        of shard: TileCoordinate, band: ShardScheme.Band, blockTiles: Int = defaultBlockTiles
    ) -> [TileRange] {
        var reads: [TileRange] = []
        func walk(z: Int, col: Int, row: Int, tiles: Int) {
            if z == band.deepest {
                reads.append(
                    TileRange(z: z, minCol: col, minRow: row, maxCol: col + tiles - 1, maxRow: row + tiles - 1))
            } else if tiles * 2 <= blockTiles {
                walk(z: z + 1, col: col * 2, row: row * 2, tiles: tiles * 2)
            } else {
                for q in 0..<4 {
                    walk(z: z + 1, col: col * 2 + (q & 1) * tiles, row: row * 2 + (q >> 1) * tiles, tiles: tiles)
                }
            }
        }
        let k = partsPerSide(band)
        if k == 1 {
            walk(z: band.top, col: shard.col, row: shard.row, tiles: 1)
        } else {
            let n = 16 / k
            for p in 0..<k * k {
                walk(z: band.top + 4, col: shard.col * 16 + (p % k) * n, row: shard.row * 16 + (p / k) * n, tiles: n)
            }
        }
        return reads
    }

    /// The ground a part of a shard covers (all of it when the shard is built whole).
    static func bounds(
        of part: Int?, shard: TileCoordinate, band: ShardScheme.Band, tms: TileMatrixSet
    ) -> BoundingBox {
        guard let part else { return tms.bounds(of: shard) }
        let k = partsPerSide(band)
        let n = 16 / k
        let z = band.top + 4
        let col = shard.col * 16 + (part % k) * n
        let row = shard.row * 16 + (part / k) * n
        return tms.bounds(of: TileCoordinate(z: z, col: col, row: row)).union(
            tms.bounds(of: TileCoordinate(z: z, col: col + n - 1, row: row + n - 1)))
    }

    /// A writer for `shard` at `path`, with the shard's georeferencing.
    func makeWriter(shard: TileCoordinate, path: String) throws -> ShardWriter {
        let box = tms.bounds(of: shard)
        let deepest = tms.tileMatrices[band.deepest]
        let geometry = ShardGeometry(
            originX: box.minX, originY: box.maxY, resolution: deepest.cellSize, levelCount: band.levelCount,
            tileSize: deepest.tileWidth, epsg: epsg)
        return try ShardWriter(path: path, geometry: geometry, format: format)
    }

    private func prepare(_ job: ShardJob) throws {
        writer = job.writer
        self.job = job
        pixelsRead = 0
        if currentShard != job.shard {
            try reader.begin(shard: job.shard)
            currentShard = job.shard
        }
    }

    /// Builds every level of a shard in one go (bands too short to split).
    func buildWhole(_ job: ShardJob) throws -> Int {
        try prepare(job)
        defer { (writer, self.job) = (nil, nil) }
        _ = try node(z: band.top, col: job.shard.col, row: job.shard.row, tiles: 1, shard: job.shard, depth: 0)
        return pixelsRead
    }

    /// Builds one part (row-major among `partsPerSide`²) of a shard down from the band's top
    /// level + 4, and returns its top canvas, now owned by the caller, and the source pixels read.
    func buildPart(_ job: ShardJob, part p: Int) throws -> (Canvas?, Int) {
        try prepare(job)
        defer { (writer, self.job) = (nil, nil) }
        let k = Self.partsPerSide(band)
        let n = 16 / k
        let c = try node(
            z: band.top + 4, col: job.shard.col * 16 + (p % k) * n, row: job.shard.row * 16 + (p / k) * n,
            tiles: n, shard: job.shard, depth: 0)
        // The canvas stays this builder's: the caller halves it into the job before the next build.
        return (c, pixelsRead)
    }

    /// Writes the band's top four levels from the job's merged canvas (the parts, halved).
    func merge(_ job: ShardJob, merged: Canvas?) throws {
        writer = job.writer
        self.job = job
        defer { (writer, self.job) = (nil, nil) }
        guard var current = merged else { return }
        var z = band.top + 3
        var tiles = 1 << 3
        while true {
            let up = z - band.top
            let range = TileRange(
                z: z, minCol: job.shard.col << up, minRow: job.shard.row << up,
                maxCol: (job.shard.col << up) + tiles - 1, maxRow: (job.shard.row << up) + tiles - 1)
            try encode(current, range: range, shard: job.shard)
            guard z > band.top else { break }
            z -= 1
            tiles /= 2
            let next = canvas(depth: 100 + band.top + 3 - z, side: tiles * 256)
            PixelOps.downsample(
                current.pixels, srcStride: current.stride, into: next.pixels, dstStride: next.stride,
                width: next.side, height: next.side, nearest: nearestOverviews)
            current = next
        }
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
        if let job, let previous = job.previous, let area = job.area, !area.touches(box(of: range)) {
            return try keep(range, from: previous, shard: shard, depth: depth)
        }
        guard reader.mayHaveData(range) else { return nil }
        let side = tiles * 256
        let out = canvas(depth: depth, side: side)
        if z == band.deepest {
            out.clear()
            guard try reader.read(range, into: out) else { return nil }
            pixelsRead += side * side
        } else if tiles * 2 <= blockTiles, !partlyChanged(z: z + 1, col: col * 2, row: row * 2, tiles: tiles) {
            // The whole block below fits in one canvas: read it and halve it.
            guard
                let child = try node(
                    z: z + 1, col: col * 2, row: row * 2, tiles: tiles * 2, shard: shard, depth: depth + 1)
            else { return nil }
            PixelOps.downsample(
                child.pixels, srcStride: child.stride, into: out.pixels, dstStride: out.stride, width: side,
                height: side, nearest: nearestOverviews)
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

    /// True in an incremental build when a changed dalle reaches some quadrant of the block of
    /// `tiles`×2 tiles at (z, col, row) but not all four: the untouched quadrants are then kept
    /// from the previous version (decoded stored tiles) instead of read again from the sources.
    private func partlyChanged(z: Int, col: Int, row: Int, tiles: Int) -> Bool {
        guard let job, job.previous != nil, let area = job.area else { return false }
        var touched = 0
        for q in 0..<4 {
            let c = col + (q & 1) * tiles
            let r = row + (q >> 1) * tiles
            let quadrant = TileRange(z: z, minCol: c, minRow: r, maxCol: c + tiles - 1, maxRow: r + tiles - 1)
            if area.touches(box(of: quadrant)) { touched += 1 }
        }
        return touched < 4
    }

    /// The area of a block of tiles in the grid's CRS.
    private func box(of range: TileRange) -> BoundingBox {
        tms.bounds(of: TileCoordinate(z: range.z, col: range.minCol, row: range.minRow)).union(
            tms.bounds(of: TileCoordinate(z: range.z, col: range.maxCol, row: range.maxRow)))
    }

    /// A block no changed dalle reaches: its stored tiles, at its level and every deeper one of
    /// the band, are copied from the shard's previous version as they are; the block's own level
    /// is decoded for the levels above, which do change. Nil when the previous version has no
    /// tile there (then nothing deeper either: an overview exists wherever a tile below does).
    private func keep(_ range: TileRange, from previous: ShardReader, shard: TileCoordinate, depth: Int) throws
        -> Canvas?
    {
        let out = canvas(depth: depth, side: range.colCount * 256)
        out.clear()
        var any = false
        for t in range.tiles {
            let (overview, lc, lr) = place(t, in: shard)
            let dst = out.pixels + (t.row - range.minRow) * 256 * out.stride + (t.col - range.minCol) * 256 * 4
            guard try stored.decode(previous, overview: overview, col: lc, row: lr, into: dst, stride: out.stride)
            else { continue }
            try copy(t, from: previous, shard: shard)
            any = true
        }
        guard any else { return nil }
        var z = range.z + 1
        while z <= band.deepest {
            let up = z - range.z
            let below = TileRange(
                z: z, minCol: range.minCol << up, minRow: range.minRow << up, maxCol: ((range.maxCol + 1) << up) - 1,
                maxRow: ((range.maxRow + 1) << up) - 1)
            for t in below.tiles { try copy(t, from: previous, shard: shard) }
            z += 1
        }
        return out
    }

    /// A tile's overview index and column and row inside `shard`.
    private func place(_ t: TileCoordinate, in shard: TileCoordinate) -> (overview: Int, col: Int, row: Int) {
        let up = t.z - band.top
        return (band.deepest - t.z, t.col - (shard.col << up), t.row - (shard.row << up))
    }

    /// Copies one tile's stored bytes and mask from the previous version of the shard; false
    /// when it had none there.
    @discardableResult
    private func copy(_ t: TileCoordinate, from previous: ShardReader, shard: TileCoordinate) throws -> Bool {
        guard let writer else { return false }
        let (overview, lc, lr) = place(t, in: shard)
        guard try writer.add(overview: overview, col: lc, row: lr, from: previous) else { return false }
        job?.copied.add(1, ordering: .relaxed)
        return true
    }

    private func encode(_ c: Canvas, range: TileRange, shard: TileCoordinate) throws {
        guard let writer else { return }
        let up = range.z - band.top
        let overview = band.deepest - range.z
        let previous = job?.previous
        let area = job?.area
        for t in range.tiles {
            if let previous, let area, !area.touches(tms.bounds(of: t)) {
                // Untouched: the previous bytes, not a second encoding of the same pixels.
                try copy(t, from: previous, shard: shard)
                continue
            }
            let p = c.pixels + (t.row - range.minRow) * 256 * c.stride + (t.col - range.minCol) * 256 * 4
            let valid = PixelOps.validCount(p, stride: c.stride, size: 256)
            if valid == 0 { continue }
            job?.encoded.add(1, ordering: .relaxed)
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
                    ShardWriter.packMask(p, stride: c.stride, size: 256, into: bits)
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

/// One shard under construction, shared by the workers building its parts: the last part to
/// finish merges them and writes the file.
final class ShardJob: @unchecked Sendable {
    let shard: TileCoordinate
    let writer: ShardWriter
    /// The shard as the base generation has it, when only part of it is rebuilt, and where the
    /// dalles changed: tiles out of that area are copied from it.
    let previous: ShardReader?
    let area: ChangeArea?
    /// Tiles copied from `previous`, and tiles encoded.
    let copied = Atomic<Int>(0)
    let encoded = Atomic<Int>(0)
    private let lock = NSLock()
    /// The shard at the band's top level + 3 (8×8 tiles): each part is halved into its place as
    /// soon as it is built, so a job holds one canvas, not one per part.
    private var merged: Canvas?
    private var remaining: Int
    private(set) var pixelsRead = 0
    private(set) var error: Error?

    private let partsPerSide: Int

    init(shard: TileCoordinate, writer: ShardWriter, partsPerSide: Int, previous: ShardReader?, area: ChangeArea?) {
        self.shard = shard
        self.writer = writer
        self.previous = previous
        self.area = area
        self.partsPerSide = partsPerSide
        remaining = partsPerSide * partsPerSide
    }

    /// Records one part, halving its canvas (if any) into the merged canvas; returns the merged
    /// canvas when it was the last part (nil when every part was empty).
    func complete(part: Int?, canvas: Canvas?, pixels: Int, error: Error?, nearest: Bool) -> (
        last: Bool, merged: Canvas?
    ) {
        lock.lock()
        defer { lock.unlock() }
        if let part, let canvas, error == nil {
            let k = partsPerSide
            if merged == nil { merged = Canvas(side: canvas.side * k / 2) }
            if let m = merged {
                let side = m.side / k
                PixelOps.downsample(
                    canvas.pixels, srcStride: canvas.stride,
                    into: m.pixels + (part / k) * side * m.stride + (part % k) * side * 4, dstStride: m.stride,
                    width: side, height: side, nearest: nearest)
            }
        }
        pixelsRead += pixels
        if let error, self.error == nil { self.error = error }
        remaining -= 1
        if remaining == 0 {
            defer { merged = nil }
            return (true, merged)
        }
        return (false, nil)
    }
}
