import Foundation
import GeoGrid
import Pyramid
import Raster
import Synchronization

/// Fills the pixels of a block of tiles at a band's deepest level. Implementations hold GDAL
/// handles or shard maps: one per worker, never shared.
protocol LeafReader: AnyObject {
    /// Prepares for one shard (its footprint in the grid's CRS).
    func begin(shard: BoundingBox) throws
    /// Reads `range` into `canvas` (cleared beforehand); false when nothing was there.
    func read(_ range: TileRange, into canvas: Canvas) throws -> Bool
    /// False when `range` (at any level of the band) certainly holds no data: the walk skips it.
    func mayHaveData(_ range: TileRange) -> Bool
}

/// Dalles found unreadable while tiling, shared by all workers so each is reported once.
final class BadDalles: Sendable {
    private let state = Mutex<[String: String]>([:])

    func add(_ path: String, _ reason: String) { state.withLock { if $0[path] == nil { $0[path] = reason } } }
    func contains(_ path: String) -> Bool { state.withLock { $0[path] != nil } }
    var all: [String: String] { state.withLock { $0 } }
}

/// Reads the original dalles through a VRT mosaic per CRS: a pixel copy when the level is the
/// dalles' own grid, GDAL's warper (approximate transformer, alpha-aware) otherwise.
final class DalleReader: LeafReader {
    let tms: TileMatrixSet
    let gridSRS: SpatialReference
    let gridWKT: String
    let footprints: RectIndex<SourceEntry>
    let resampling: Resampling
    let bad: BadDalles
    /// Blocks of JPEG 2000 dalles decoded once for all workers; nil to read everything through
    /// the mosaic.
    let decoded: DecodedBlocks?
    private var sameCRS: [String: Bool] = [:]
    /// The dalles of the shard by CRS: a mosaic of each, and where each dalle lies on it in whole
    /// pixels when its blocks are read through `decoded` (nil: read through the mosaic).
    private var groups:
        [(
            entries: [SourceEntry], vrt: Dataset, origin: (Double, Double), resolution: Double, same: Bool, width: Int,
            height: Int, placements: [(x: Int, y: Int)]?
        )] = []
    /// JPEG 2000 dalles this worker has open to decode blocks, the most recently used last.
    private var dalles: [(path: String, dataset: Dataset)] = []
    private var shardBox = BoundingBox(minX: 0, minY: 0, maxX: 0, maxY: 0)
    private var reprojectors: [String: Reprojector] = [:]
    private var sourceBuffer: UnsafeMutablePointer<UInt8>?
    private var sourceCapacity = 0

    deinit { sourceBuffer?.deallocate() }

    init(
        tms: TileMatrixSet, footprints: RectIndex<SourceEntry>, resampling: Resampling, bad: BadDalles,
        decoded: DecodedBlocks? = nil
    ) throws {
        self.tms = tms
        gridSRS = try SpatialReference(tms.crs)
        gridWKT = gridSRS.wkt
        self.footprints = footprints
        self.resampling = resampling
        self.bad = bad
        self.decoded = decoded
    }

    func begin(shard: BoundingBox) throws {
        shardBox = shard
        try buildGroups()
    }

    private func buildGroups() throws {
        groups = []
        // A margin of a few source pixels so bilinear kernels at the shard edge see their neighbours.
        let candidates = footprints.query(shardBox.expanded(by: shardBox.width / 1000))
            .map { footprints.items[$0].value }
            .filter { !bad.contains($0.path) }
        let byCRS = Dictionary(grouping: candidates, by: \.crsWKT)
        for (wkt, entries) in byCRS.sorted(by: { $0.key < $1.key }) {
            let same: Bool
            if let s = sameCRS[wkt] {
                same = s
            } else {
                same = (try? SpatialReference(wkt))?.isSame(as: gridSRS) ?? false
                sameCRS[wkt] = same
            }
            let sorted = entries.sorted { $0.path < $1.path }
            let (xml, origin, res, w, h) = Self.vrtXML(sorted, wkt: wkt)
            let placements = decoded == nil ? nil : Self.placements(sorted, origin: origin, resolution: res)
            groups.append((sorted, try Dataset.open(xml), origin, res, same, w, h, placements))
        }
    }

    func mayHaveData(_ range: TileRange) -> Bool {
        footprints.intersectsAny(tms.bounds(of: range))
    }

    func read(_ range: TileRange, into canvas: Canvas) throws -> Bool {
        let box = tms.bounds(of: range)
        guard footprints.intersectsAny(box) else { return false }
        do {
            return try readOnce(range, box: box, into: canvas)
        } catch {
            // Find the dalle(s) that cannot be decoded, set them aside, and try again without them.
            var found = false
            for g in groups {
                for e in g.entries where e.bounds.intersects(box) || !g.same {
                    if let reason = Self.probe(e) {
                        bad.add(e.path, reason)
                        found = true
                    }
                }
            }
            guard found else { throw error }
            try buildGroups()
            canvas.clear()
            return try readOnce(range, box: box, into: canvas)
        }
    }

    private func readOnce(_ range: TileRange, box: BoundingBox, into canvas: Canvas) throws -> Bool {
        guard let m = tms.matrix(range.z), !groups.isEmpty else { return false }
        let side = range.colCount * m.tileWidth
        if groups.count == 1, let g = groups.first, g.same, abs(g.resolution - m.cellSize) < 1e-9 * m.cellSize {
            let fx = (box.minX - g.origin.0) / g.resolution
            let fy = (g.origin.1 - box.maxY) / g.resolution
            if abs(fx - fx.rounded()) < 1e-6, abs(fy - fy.rounded()) < 1e-6 {
                // The level is the dalles' own pixel grid: copy, no resampling.
                let x0 = Int(fx.rounded())
                let y0 = Int(fy.rounded())
                let rx0 = max(0, x0)
                let ry0 = max(0, y0)
                let rx1 = min(g.width, x0 + side)
                let ry1 = min(g.height, y0 + side)
                guard rx1 > rx0, ry1 > ry0 else { return false }
                if let placements = g.placements {
                    try compose(
                        g.entries, placements, x: x0, y: y0, width: side, height: side, into: canvas.pixels,
                        stride: canvas.stride, readSide: side)
                    return true
                }
                let dst = canvas.pixels + (ry0 - y0) * canvas.stride + (rx0 - x0) * 4
                try g.vrt.read(
                    x: rx0, y: ry0, width: rx1 - rx0, height: ry1 - ry0, bands: [1, 2, 3, 4], into: dst,
                    bufferWidth: rx1 - rx0, bufferHeight: ry1 - ry0, pixelSpace: 4, lineSpace: canvas.stride)
                return true
            }
        }
        // Another CRS or resolution: reproject each CRS group with a coarse transform grid.
        let output = GeoTransform(originX: box.minX, originY: box.maxY, resolution: m.cellSize)
        var any = false
        for g in groups {
            let reprojector = try reprojector(for: g.entries[0].crsWKT, same: g.same)
            let vrtTransform = GeoTransform(originX: g.origin.0, originY: g.origin.1, resolution: g.resolution)
            guard let grid = reprojector.sourceGrid(output: output, width: side, height: side, source: vrtTransform)
            else { continue }
            let x0 = max(0, Int((grid.xs.min() ?? 0).rounded(.down)) - 2)
            let y0 = max(0, Int((grid.ys.min() ?? 0).rounded(.down)) - 2)
            let x1 = min(g.width, Int((grid.xs.max() ?? 0).rounded(.up)) + 2)
            let y1 = min(g.height, Int((grid.ys.max() ?? 0).rounded(.up)) + 2)
            guard x1 > x0, y1 > y0 else { continue }
            let w = x1 - x0
            let h = y1 - y0
            if sourceCapacity < w * h * 4 {
                sourceBuffer?.deallocate()
                sourceCapacity = w * h * 4
                sourceBuffer = .allocate(capacity: sourceCapacity)
            }
            guard let src = sourceBuffer else { continue }
            if let placements = g.placements {
                src.initialize(repeating: 0, count: w * h * 4)
                try compose(
                    g.entries, placements, x: x0, y: y0, width: w, height: h, into: src, stride: w * 4, readSide: nil)
            } else {
                try g.vrt.read(
                    x: x0, y: y0, width: w, height: h, bands: [1, 2, 3, 4], into: src, bufferWidth: w, bufferHeight: h)
            }
            reprojector.resample(
                grid: grid, offsetX: x0, offsetY: y0, source: src, sourceWidth: w, sourceHeight: h,
                output: canvas.pixels, width: side, height: side, outputStride: canvas.stride)
            any = true
        }
        return any
    }

    private func reprojector(for wkt: String, same: Bool) throws -> Reprojector {
        if let r = reprojectors[wkt] { return r }
        let r = Reprojector(
            transform: same ? nil : try CoordinateTransform(from: gridSRS, to: try SpatialReference(wkt)))
        reprojectors[wkt] = r
        return r
    }

    /// Copies the window (x, y, width, height) of a mosaic's pixel grid into `dst` (RGBA, `stride`
    /// bytes a line, cleared beforehand) from the decoded blocks of its dalles: the pixels the
    /// mosaic (VRT) gives, a later dalle over an earlier one, each block decoded once in the
    /// build. `readSide`: the side of the build's reads, which tile the grid from this one, so
    /// that each block's reads are counted (nil when reads do not tile the mosaic: reprojection).
    private func compose(
        _ entries: [SourceEntry], _ placements: [(x: Int, y: Int)], x: Int, y: Int, width: Int, height: Int,
        into dst: UnsafeMutablePointer<UInt8>, stride: Int, readSide: Int?
    ) throws {
        guard let decoded else { return }
        /// Reads of `readSide` along one axis that meet pixels start..<start+length.
        func reads(_ start: Int, _ length: Int, origin: Int) -> Int? {
            guard let side = readSide else { return nil }
            func floorDiv(_ a: Int, _ b: Int) -> Int { a >= 0 ? a / b : -((-a + b - 1) / b) }
            return floorDiv(start + length - 1 - origin, side) - floorDiv(start - origin, side) + 1
        }
        for (e, p) in zip(entries, placements) {
            let x0 = max(x, p.x)
            let y0 = max(y, p.y)
            let x1 = min(x + width, p.x + e.width)
            let y1 = min(y + height, p.y + e.height)
            guard x1 > x0, y1 > y0 else { continue }
            let bw = e.blockWidth
            let bh = e.blockHeight
            for row in (y0 - p.y) / bh...(y1 - 1 - p.y) / bh {
                for col in (x0 - p.x) / bw...(x1 - 1 - p.x) / bw {
                    // The block on the mosaic: where it starts and its size (smaller at the dalle's edges).
                    let bx = p.x + col * bw
                    let by = p.y + row * bh
                    let w = min(bw, e.width - col * bw)
                    let h = min(bh, e.height - row * bh)
                    let key = DecodedBlocks.Key(path: e.path, col: col, row: row)
                    let uses = reads(bx, w, origin: x).flatMap { a in reads(by, h, origin: y).map { a * $0 } }
                    let block = try decoded.block(key, uses: uses) {
                        try decode(e, x: col * bw, y: row * bh, width: w, height: h)
                    }
                    let cx0 = max(x0, bx)
                    let cx1 = min(x1, bx + w)
                    for r in max(y0, by)..<min(y1, by + h) {
                        (dst + (r - y) * stride + (cx0 - x) * 4).update(
                            from: block.pixels + ((r - by) * w + (cx0 - bx)) * 4, count: (cx1 - cx0) * 4)
                    }
                    decoded.done(key)
                }
            }
        }
    }

    /// Decodes one block of a JPEG 2000 dalle into RGBA, alpha from its alpha band or its mask,
    /// as the mosaic reads it. GDAL decodes every band of the block at once (and with OpenJPEG's
    /// threads, `GDAL_NUM_THREADS`: all cores by default, so a worker left alone at the end of a
    /// band still keeps them busy).
    private func decode(_ e: SourceEntry, x: Int, y: Int, width: Int, height: Int) throws -> DecodedBlocks.Block {
        let ds = try dataset(e.path)
        let block = DecodedBlocks.Block(width: width, height: height)
        try ds.read(
            x: x, y: y, width: width, height: height, bands: e.bands == 4 ? [1, 2, 3, 4] : [1, 2, 3],
            into: block.pixels, bufferWidth: width, bufferHeight: height, pixelSpace: 4, lineSpace: width * 4)
        if e.bands != 4 {
            if ds.maskIsAllValid(band: 1) {
                for i in 0..<width * height { block.pixels[i * 4 + 3] = 255 }
            } else {
                try ds.readMask(
                    band: 1, x: x, y: y, width: width, height: height, into: block.pixels + 3, pixelSpace: 4,
                    lineSpace: width * 4)
            }
        }
        return block
    }

    /// This worker's handle on a dalle, opened on first use; a few stay open.
    private func dataset(_ path: String) throws -> Dataset {
        if let i = dalles.firstIndex(where: { $0.path == path }) {
            let d = dalles.remove(at: i)
            dalles.append(d)
            return d.dataset
        }
        let ds = try Dataset.open(path)
        if dalles.count >= 8 { dalles.removeFirst() }
        dalles.append((path, ds))
        return ds
    }

    /// Where each dalle lies on the mosaic of `entries`, in whole pixels, when every one is a
    /// JPEG 2000 dalle of 3 or 4 bands at the mosaic's resolution: then its blocks are decoded
    /// once for the build and copied. Nil otherwise: other formats are cheap to decode, and a
    /// dalle off the mosaic's pixel grid is resampled by the mosaic.
    static func placements(_ entries: [SourceEntry], origin: (Double, Double), resolution res: Double)
        -> [(x: Int, y: Int)]?
    {
        var out: [(x: Int, y: Int)] = []
        for e in entries {
            let ext = (e.path as NSString).pathExtension.lowercased()
            guard ["jp2", "j2k", "jpx", "jpf"].contains(ext), e.bands == 3 || e.bands == 4, e.blockWidth > 0,
                e.blockHeight > 0
            else { return nil }
            let dx = (e.bounds.minX - origin.0) / res
            let dy = (origin.1 - e.bounds.maxY) / res
            let w = e.bounds.width / res
            let h = e.bounds.height / res
            guard abs(dx - dx.rounded()) < 1e-6, abs(dy - dy.rounded()) < 1e-6, abs(w - Double(e.width)) < 1e-6,
                abs(h - Double(e.height)) < 1e-6
            else { return nil }
            out.append((Int(dx.rounded()), Int(dy.rounded())))
        }
        return out
    }

    /// Reads a dalle in full; the reason when it cannot be decoded.
    static func probe(_ e: SourceEntry) -> String? {
        do {
            let ds = try Dataset.open(e.path)
            let rows = 64
            var buf = [UInt8](repeating: 0, count: ds.width * rows)
            try buf.withUnsafeMutableBufferPointer { p in
                var y = 0
                while y < ds.height {
                    let h = min(rows, ds.height - y)
                    for b in 1...ds.bandCount {
                        try ds.read(
                            x: 0, y: y, width: ds.width, height: h, bands: [b], into: p.baseAddress!,
                            bufferWidth: ds.width, bufferHeight: h)
                    }
                    y += h
                }
            }
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// A VRT mosaic (RGB + alpha) of dalles sharing one CRS, at the finest of their resolutions.
    /// Source properties are written out so GDAL opens a dalle only when its pixels are read.
    static func vrtXML(_ entries: [SourceEntry], wkt: String) -> (String, (Double, Double), Double, Int, Int) {
        let res = entries.map(\.resolution).min() ?? 1
        let minX = entries.map(\.bounds.minX).min() ?? 0
        let maxY = entries.map(\.bounds.maxY).max() ?? 0
        let maxX = entries.map(\.bounds.maxX).max() ?? 0
        let minY = entries.map(\.bounds.minY).min() ?? 0
        let w = Int(((maxX - minX) / res - 1e-6).rounded(.up))
        let h = Int(((maxY - minY) / res - 1e-6).rounded(.up))
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
                .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
        }
        var xml = "<VRTDataset rasterXSize=\"\(w)\" rasterYSize=\"\(h)\">"
        xml += "<SRS dataAxisToSRSAxisMapping=\"1,2\">\(esc(wkt))</SRS>"
        xml += "<GeoTransform>\(minX), \(res), 0, \(maxY), 0, \(-res)</GeoTransform>"
        let colors = ["Red", "Green", "Blue", "Alpha"]
        for band in 1...4 {
            xml += "<VRTRasterBand dataType=\"Byte\" band=\"\(band)\"><ColorInterp>\(colors[band - 1])</ColorInterp>"
            for e in entries {
                let props =
                    "<SourceProperties RasterXSize=\"\(e.width)\" RasterYSize=\"\(e.height)\" DataType=\"Byte\""
                    + " BlockXSize=\"\(max(1, e.blockWidth))\" BlockYSize=\"\(max(1, e.blockHeight))\"/>"
                let dx = (e.bounds.minX - minX) / res
                let dy = (maxY - e.bounds.maxY) / res
                let rects =
                    "<SrcRect xOff=\"0\" yOff=\"0\" xSize=\"\(e.width)\" ySize=\"\(e.height)\"/>"
                    + "<DstRect xOff=\"\(dx)\" yOff=\"\(dy)\" xSize=\"\(e.bounds.width / res)\" ySize=\"\(e.bounds.height / res)\"/>"
                let file = "<SourceFilename relativeToVRT=\"0\">\(esc(e.path))</SourceFilename>"
                if band < 4 {
                    let sb = e.bands == 1 ? 1 : band
                    xml += "<SimpleSource>\(file)<SourceBand>\(sb)</SourceBand>\(props)\(rects)</SimpleSource>"
                } else {
                    let sb = e.bands == 4 ? "4" : "mask,1"
                    xml += "<SimpleSource>\(file)<SourceBand>\(sb)</SourceBand>\(props)\(rects)</SimpleSource>"
                }
            }
            xml += "</VRTRasterBand>"
        }
        xml += "</VRTDataset>"
        return (xml, (minX, maxY), res, w, h)
    }
}

/// Decodes stored tiles (with their mask as alpha) of a shard into a canvas: the band above reads
/// the top level of the band below, an incremental build the unchanged blocks of a shard's
/// previous version. One per worker (it owns a codec).
final class StoredTileDecoder {
    let format: TileFormat
    private let codec: JPEGCodec
    private let maskBits = UnsafeMutablePointer<UInt8>.allocate(capacity: 8192)

    init(format: TileFormat) throws {
        self.format = format
        codec = try JPEGCodec()
    }

    deinit { maskBits.deallocate() }

    /// Decodes one tile of `reader` into `dst` (256×256 RGBA, `stride` bytes per line); false
    /// when the shard has no tile there (`dst` untouched).
    func decode(
        _ reader: ShardReader, overview: Int, col: Int, row: Int, into dst: UnsafeMutablePointer<UInt8>, stride: Int
    )
        throws -> Bool
    {
        guard let bytes = try reader.tile(overview: overview, col: col, row: row) else { return false }
        try bytes.withUnsafeBytes { bytes in
            switch format {
            case .jpeg:
                try codec.decode(bytes, into: dst, width: 256, height: 256, stride: stride)
                if let mask = try reader.maskTile(overview: overview, col: col, row: row) {
                    try mask.withUnsafeBytes {
                        try Deflate.decompress($0, into: UnsafeMutableRawBufferPointer(start: maskBits, count: 8192))
                    }
                    PixelOps.applyMask(maskBits, to: dst, stride: stride, size: 256)
                }
            case .webp:
                try WebPCodec.decode(bytes, into: dst, width: 256, height: 256, stride: stride)
            }
        }
        return true
    }
}

/// Reads a level from the coarsest level of the band below (already written shards), two times
/// finer, and halves it: how bands after the first are built.
final class PyramidLevelReader: LeafReader {
    let directory: String
    let below: ShardScheme.Band
    /// The shards of the band below in the generation being built, with their files.
    let shards: [TileCoordinate: String]
    /// Halving takes the top-left pixel of each 2×2 (nearest) rather than their average.
    let nearest: Bool
    private let stored: StoredTileDecoder
    private var scratch: Canvas?

    init(
        directory: String, below: ShardScheme.Band, format: TileFormat, shards: [TileCoordinate: String],
        nearest: Bool
    ) throws {
        self.directory = directory
        self.below = below
        self.shards = shards
        self.nearest = nearest
        stored = try StoredTileDecoder(format: format)
    }

    func begin(shard: BoundingBox) throws {}

    func mayHaveData(_ range: TileRange) -> Bool {
        let up = below.top - range.z
        guard up >= 0 else { return true }
        let r = TileRange(
            z: below.top, minCol: range.minCol << up, minRow: range.minRow << up,
            maxCol: ((range.maxCol + 1) << up) - 1, maxRow: ((range.maxRow + 1) << up) - 1)
        if r.count <= shards.count { return r.tiles.contains { shards[$0] != nil } }
        return shards.keys.contains { r.contains($0) }
    }

    func read(_ range: TileRange, into canvas: Canvas) throws -> Bool {
        let fine = TileRange(
            z: range.z + 1, minCol: range.minCol * 2, minRow: range.minRow * 2, maxCol: range.maxCol * 2 + 1,
            maxRow: range.maxRow * 2 + 1)
        precondition(fine.z == below.top)
        let side = fine.colCount * 256
        if scratch?.side != side { scratch = Canvas(side: side) }
        guard let big = scratch else { return false }
        let present = fine.tiles.compactMap { t in shards[t].map { (t, $0) } }
        guard !present.isEmpty else { return false }
        big.clear()
        var any = false
        for (t, file) in present {
            let reader = try ShardReader(path: (directory as NSString).appendingPathComponent(file))
            let dst = big.pixels + (t.row - fine.minRow) * 256 * big.stride + (t.col - fine.minCol) * 256 * 4
            if try stored.decode(
                reader, overview: reader.images.count - 1, col: 0, row: 0, into: dst, stride: big.stride)
            {
                any = true
            }
        }
        guard any else { return false }
        PixelOps.downsample(
            big.pixels, srcStride: big.stride, into: canvas.pixels, dstStride: canvas.stride, width: canvas.side,
            height: canvas.side, nearest: nearest)
        return true
    }
}
