import Foundation
import GeoGrid
import Pyramid
import Raster
import Synchronization

/// Fills the pixels of a block of tiles at a band's deepest level. Implementations hold GDAL
/// handles or shard maps: one per worker, never shared.
protocol LeafReader: AnyObject {
    /// Prepares for one shard of the band.
    func begin(shard: TileCoordinate) throws
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
    /// Which blocks warped reads will ask for, counted ahead shard by shard (nil: not counted).
    let plan: ReadPlan?
    private var sameCRS: [String: Bool] = [:]
    /// The dalles around the shard by CRS, each group as one mosaic.
    private var mosaics: [Mosaic] = []
    private var shardBox = BoundingBox(minX: 0, minY: 0, maxX: 0, maxY: 0)
    /// JPEG 2000 dalles this worker has open to decode blocks, the most recently used last.
    private var dalles: [(path: String, dataset: Dataset)] = []
    private var reprojectors: [String: Reprojector] = [:]
    private var sourceBuffer: UnsafeMutablePointer<UInt8>?
    private var sourceCapacity = 0

    /// Dalles sharing one CRS as one image, at the finest of their resolutions: a VRT, and where
    /// each dalle lies on it in whole pixels when its blocks are read through `decoded` (nil:
    /// read through the VRT).
    final class Mosaic {
        let entries: [SourceEntry]
        let xml: String
        let origin: (Double, Double)
        let resolution: Double
        /// The dalles' CRS is the grid's.
        let same: Bool
        let width: Int
        let height: Int
        let placements: [(x: Int, y: Int)]?
        private var opened: Dataset?

        init(entries: [SourceEntry], same: Bool, blocks: Bool) {
            self.entries = entries
            self.same = same
            (xml, origin, resolution, width, height) = DalleReader.vrtXML(entries, wkt: entries[0].crsWKT)
            placements = blocks ? DalleReader.placements(entries, origin: origin, resolution: resolution) : nil
        }

        /// The VRT, opened on first use (reads of decoded blocks never need it).
        func vrt() throws -> Dataset {
            if let opened { return opened }
            let ds = try Dataset.open(xml)
            opened = ds
            return ds
        }

        /// Calls `body` for each block of a dalle under the window (x, y, width, height) of the
        /// mosaic: the dalle, where it lies, the block's column and row in it.
        func forEachBlock(
            x: Int, y: Int, width: Int, height: Int,
            _ body: (SourceEntry, (x: Int, y: Int), Int, Int) throws -> Void
        ) rethrows {
            guard let placements else { return }
            for (e, p) in zip(entries, placements) {
                let x0 = max(x, p.x)
                let y0 = max(y, p.y)
                let x1 = min(x + width, p.x + e.width)
                let y1 = min(y + height, p.y + e.height)
                guard x1 > x0, y1 > y0 else { continue }
                for row in (y0 - p.y) / e.blockHeight...(y1 - 1 - p.y) / e.blockHeight {
                    for col in (x0 - p.x) / e.blockWidth...(x1 - 1 - p.x) / e.blockWidth { try body(e, p, col, row) }
                }
            }
        }
    }

    deinit { sourceBuffer?.deallocate() }

    init(
        tms: TileMatrixSet, footprints: RectIndex<SourceEntry>, resampling: Resampling, bad: BadDalles,
        decoded: DecodedBlocks? = nil, plan: ReadPlan? = nil
    ) throws {
        self.plan = plan
        self.tms = tms
        gridSRS = try SpatialReference(tms.crs)
        gridWKT = gridSRS.wkt
        self.footprints = footprints
        self.resampling = resampling
        self.bad = bad
        self.decoded = decoded
    }

    func begin(shard: TileCoordinate) throws {
        if let plan {
            try plan.prepare(around: shard) { neighbour in
                let mosaics = try mosaics(around: tms.bounds(of: neighbour))
                return try ShardBuilder.deepestReads(of: neighbour, band: plan.band).flatMap {
                    try blocks(reading: $0, from: mosaics)
                }
            }
        }
        try begin(area: tms.bounds(of: shard))
    }

    /// Prepares for reads inside `area` (in the grid's CRS).
    func begin(area: BoundingBox) throws {
        shardBox = area
        mosaics = try mosaics(around: area)
    }

    /// The usable dalles around `area` grouped by CRS, as mosaics.
    private func mosaics(around area: BoundingBox) throws -> [Mosaic] {
        // A margin of a few source pixels so bilinear kernels at the shard edge see their neighbours.
        let candidates = footprints.query(area.expanded(by: area.width / 1000))
            .map { footprints.items[$0].value }
            .filter { !bad.contains($0.path) }
        return try Dictionary(grouping: candidates, by: \.crsWKT).sorted { $0.key < $1.key }.map { wkt, entries in
            let same: Bool
            if let s = sameCRS[wkt] {
                same = s
            } else {
                same = (try? SpatialReference(wkt))?.isSame(as: gridSRS) ?? false
                sameCRS[wkt] = same
            }
            let mosaic = Mosaic(entries: entries.sorted { $0.path < $1.path }, same: same, blocks: decoded != nil)
            if mosaic.placements == nil { _ = try mosaic.vrt() }
            return mosaic
        }
    }

    /// The decoded blocks a warped read of `range` takes from `mosaics`, once per read; none when
    /// the read is a copy (a copy counts its reads itself) or finds no dalle.
    private func blocks(reading range: TileRange, from mosaics: [Mosaic]) throws -> [DecodedBlocks.Key] {
        let box = tms.bounds(of: range)
        guard let m = tms.matrix(range.z), footprints.intersectsAny(box), copyOrigin(mosaics, box: box, m) == nil
        else { return [] }
        var keys: [DecodedBlocks.Key] = []
        for g in mosaics where g.placements != nil {
            guard let w = try window(g, box: box, m, side: range.colCount * m.tileWidth) else { continue }
            g.forEachBlock(x: w.x0, y: w.y0, width: w.x1 - w.x0, height: w.y1 - w.y0) { e, _, col, row in
                keys.append(DecodedBlocks.Key(path: e.path, col: col, row: row))
            }
        }
        return keys
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
            for g in mosaics {
                for e in g.entries where e.bounds.intersects(box) || !g.same {
                    if let reason = Self.probe(e) {
                        bad.add(e.path, reason)
                        found = true
                    }
                }
            }
            guard found else { throw error }
            mosaics = try mosaics(around: shardBox)
            canvas.clear()
            return try readOnce(range, box: box, into: canvas)
        }
    }

    /// Where a read of `box` at level `m` starts on the only mosaic, in whole pixels, when the
    /// level is that mosaic's own pixel grid (the read is a copy); nil when it is warped.
    private func copyOrigin(_ mosaics: [Mosaic], box: BoundingBox, _ m: TileMatrix) -> (Mosaic, Int, Int)? {
        guard mosaics.count == 1, let g = mosaics.first, g.same, abs(g.resolution - m.cellSize) < 1e-9 * m.cellSize
        else { return nil }
        let fx = (box.minX - g.origin.0) / g.resolution
        let fy = (g.origin.1 - box.maxY) / g.resolution
        guard abs(fx - fx.rounded()) < 1e-6, abs(fy - fy.rounded()) < 1e-6 else { return nil }
        return (g, Int(fx.rounded()), Int(fy.rounded()))
    }

    /// The window of mosaic `g` a warped read of `box` (`side` pixels at level `m`) takes, with a
    /// margin for the resampling kernel, and where its output pixels fall on `g`; nil when the
    /// read misses `g`.
    private func window(_ g: Mosaic, box: BoundingBox, _ m: TileMatrix, side: Int) throws -> (
        grid: (xs: [Double], ys: [Double], columns: Int, rows: Int), x0: Int, y0: Int, x1: Int, y1: Int
    )? {
        let reprojector = try reprojector(for: g.entries[0].crsWKT, same: g.same)
        let output = GeoTransform(originX: box.minX, originY: box.maxY, resolution: m.cellSize)
        let vrtTransform = GeoTransform(originX: g.origin.0, originY: g.origin.1, resolution: g.resolution)
        guard let grid = reprojector.sourceGrid(output: output, width: side, height: side, source: vrtTransform)
        else { return nil }
        let x0 = max(0, Int((grid.xs.min() ?? 0).rounded(.down)) - 2)
        let y0 = max(0, Int((grid.ys.min() ?? 0).rounded(.down)) - 2)
        let x1 = min(g.width, Int((grid.xs.max() ?? 0).rounded(.up)) + 2)
        let y1 = min(g.height, Int((grid.ys.max() ?? 0).rounded(.up)) + 2)
        guard x1 > x0, y1 > y0 else { return nil }
        return (grid, x0, y0, x1, y1)
    }

    private func readOnce(_ range: TileRange, box: BoundingBox, into canvas: Canvas) throws -> Bool {
        guard let m = tms.matrix(range.z), !mosaics.isEmpty else { return false }
        let side = range.colCount * m.tileWidth
        if let (g, x0, y0) = copyOrigin(mosaics, box: box, m) {
            // The level is the dalles' own pixel grid: copy, no resampling.
            let rx0 = max(0, x0)
            let ry0 = max(0, y0)
            let rx1 = min(g.width, x0 + side)
            let ry1 = min(g.height, y0 + side)
            guard rx1 > rx0, ry1 > ry0 else { return false }
            if g.placements != nil {
                try compose(
                    g, x: x0, y: y0, width: side, height: side, into: canvas.pixels, stride: canvas.stride,
                    readSide: side)
                return true
            }
            let dst = canvas.pixels + (ry0 - y0) * canvas.stride + (rx0 - x0) * 4
            try g.vrt().read(
                x: rx0, y: ry0, width: rx1 - rx0, height: ry1 - ry0, bands: [1, 2, 3, 4], into: dst,
                bufferWidth: rx1 - rx0, bufferHeight: ry1 - ry0, pixelSpace: 4, lineSpace: canvas.stride)
            return true
        }
        // Another CRS or resolution: reproject each CRS group with a coarse transform grid.
        var any = false
        for g in mosaics {
            guard let (grid, x0, y0, x1, y1) = try window(g, box: box, m, side: side) else { continue }
            let w = x1 - x0
            let h = y1 - y0
            if sourceCapacity < w * h * 4 {
                sourceBuffer?.deallocate()
                sourceCapacity = w * h * 4
                sourceBuffer = .allocate(capacity: sourceCapacity)
            }
            guard let src = sourceBuffer else { continue }
            if g.placements != nil {
                src.initialize(repeating: 0, count: w * h * 4)
                try compose(g, x: x0, y: y0, width: w, height: h, into: src, stride: w * 4, readSide: nil)
            } else {
                try g.vrt().read(
                    x: x0, y: y0, width: w, height: h, bands: [1, 2, 3, 4], into: src, bufferWidth: w, bufferHeight: h)
            }
            try reprojector(for: g.entries[0].crsWKT, same: g.same).resample(
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

    /// Copies the window (x, y, width, height) of mosaic `g` into `dst` (RGBA, `stride` bytes a
    /// line, cleared beforehand) from the decoded blocks of its dalles: the pixels the mosaic
    /// (VRT) gives, a later dalle over an earlier one, each block decoded once in the build.
    /// `readSide`: the side of the build's reads, which tile the grid from this one, so that each
    /// block's reads are counted here; nil when reads do not tile the mosaic (they are warped) and
    /// the count is the plan's, if any.
    private func compose(
        _ g: Mosaic, x: Int, y: Int, width: Int, height: Int, into dst: UnsafeMutablePointer<UInt8>, stride: Int,
        readSide: Int?
    ) throws {
        guard let decoded else { return }
        /// Reads of `readSide` along one axis that meet pixels start..<start+length.
        func reads(_ start: Int, _ length: Int, origin: Int) -> Int? {
            guard let side = readSide else { return nil }
            func floorDiv(_ a: Int, _ b: Int) -> Int { a >= 0 ? a / b : -((-a + b - 1) / b) }
            return floorDiv(start + length - 1 - origin, side) - floorDiv(start - origin, side) + 1
        }
        let x1 = x + width
        let y1 = y + height
        try g.forEachBlock(x: x, y: y, width: width, height: height) { e, p, col, row in
            // The block on the mosaic: where it starts and its size (smaller at the dalle's edges).
            let bw = e.blockWidth
            let bh = e.blockHeight
            let bx = p.x + col * bw
            let by = p.y + row * bh
            let w = min(bw, e.width - col * bw)
            let h = min(bh, e.height - row * bh)
            let key = DecodedBlocks.Key(path: e.path, col: col, row: row)
            let uses = reads(bx, w, origin: x).flatMap { a in reads(by, h, origin: y).map { a * $0 } }
            let block = try decoded.block(key, uses: uses) {
                try decode(e, x: col * bw, y: row * bh, width: w, height: h)
            }
            let cx0 = max(x, bx)
            let cx1 = min(x1, bx + w)
            for r in max(y, by)..<min(y1, by + h) {
                (dst + (r - y) * stride + (cx0 - x) * 4).update(
                    from: block.pixels + ((r - by) * w + (cx0 - bx)) * 4, count: (cx1 - cx0) * 4)
            }
            decoded.done(key)
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

    func begin(shard: TileCoordinate) throws {}

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
