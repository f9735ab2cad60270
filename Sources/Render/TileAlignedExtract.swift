import Foundation
import GeoGrid
import Pyramid
import Raster
import Synchronization

/// A GeoTIFF extract in the pyramid's own CRS at one of its levels' pixel sizes, laid on the
/// pyramid's tiles: the image is extended to whole tiles (the margin is masked), tiles wholly
/// inside the polygon are the stored JPEG streams and masks copied as they are — no decoding,
/// no second JPEG generation — and only tiles the polygon's edge crosses are decoded, clipped and
/// encoded again. The file is written like a pyramid shard (tiled JPEG YCbCr with a 1-bit mask).
///
/// A COG extract also gets overviews, down to 512 px a side at most, as GDAL's COG driver makes
/// them: each is composed from the pyramid's own lower level — the extract's origin falls on a
/// whole pixel there, so the stored pixels are moved, not resampled — clipped, and encoded once.
struct TileAlignedExtract {
    let pyramid: any PyramidSource
    let range: TileRange
    let bounds: BoundingBox
    let cellSize: Double
    let epsg: Int
    /// Overviews below the full resolution (0 for a GeoTIFF extract).
    let overviews: Int

    /// Nil when the plan does not fit the pyramid's grid (another CRS or pixel size, WebP tiles).
    init?(plan: ExtractPlan, pyramid: any PyramidSource) {
        let m = pyramid.manifest
        guard plan.format == .gtiff || plan.format == .cog, m.format == .jpeg, !(pyramid is any CompositeSource),
            let target = try? SpatialReference(plan.crs), let grid = try? SpatialReference(m.tileMatrixSet.crs),
            target.isSame(as: grid), let epsg = grid.epsg,
            let z = (m.minZoom...m.maxZoom).first(where: { z in
                guard let cell = m.tileMatrixSet.matrix(z)?.cellSize else { return false }
                return abs(cell - plan.resolution) <= plan.resolution * 1e-9
            }),
            let cell = m.tileMatrixSet.matrix(z)?.cellSize,
            // Shrunk by a hundredth of a pixel: a window edge on a tile edge takes no extra tile.
            let range = m.tileMatrixSet.tiles(covering: plan.window.bounds.expanded(by: -cell / 100), z: z),
            !range.isEmpty
        else { return nil }
        self.pyramid = pyramid
        self.range = range
        bounds = m.tileMatrixSet.bounds(of: range)
        cellSize = cell
        self.epsg = epsg
        var overviews = 0
        if plan.format == .cog {
            // Halve while the image is over 2 tiles a side and the pyramid has the level above,
            // on the same origin at twice the pixel size (then every origin is a whole pixel there).
            let origin = m.tileMatrixSet.matrix(z)?.pointOfOrigin
            // At most as many halvings as keep a tile's origin on a whole pixel (8 for 256 px).
            while overviews < min(m.tileSize.trailingZeroBitCount, z - m.minZoom),
                (range.colCount + (1 << overviews) - 1) >> overviews > 2
                    || (range.rowCount + (1 << overviews) - 1) >> overviews > 2,
                let above = m.tileMatrixSet.matrix(z - overviews - 1), above.pointOfOrigin == origin,
                abs(above.cellSize - cell * Double(2 << overviews)) <= cell * 1e-9
            {
                overviews += 1
            }
            // Without them a COG extract is left to GDAL's COG driver.
            guard overviews > 0 || max(range.colCount, range.rowCount) <= 2 else { return nil }
        }
        self.overviews = overviews
    }

    /// Writes the GeoTIFF to `path`. `progress` gets the fraction done and returns false to cancel.
    func write(
        to path: String, polygonWKT: String, metadata: [(key: String, value: String)] = [],
        progress: (Double) -> Bool
    ) throws {
        let size = pyramid.manifest.tileSize
        let tms = pyramid.manifest.tileMatrixSet
        let writer = try ShardWriter(
            path: path,
            geometry: ShardGeometry(
                originX: bounds.minX, originY: bounds.maxY, resolution: cellSize, columns: range.colCount,
                rows: range.rowCount, levelCount: overviews + 1, tileSize: size, epsg: epsg),
            format: .jpeg)
        writer.metadata = metadata
        let polygon = try Geometry.fromWKT(polygonWKT)
        let prepared = PreparedGeometry(polygon)
        var inside: [TileCoordinate] = []
        var crossing: [TileCoordinate] = []
        for t in range.tiles {
            let box = Geometry.rectangle(tms.bounds(of: t))
            if prepared.contains(box) {
                inside.append(t)
            } else if prepared.intersects(box) {
                crossing.append(t)
            }
        }
        let total = Double(max(1, inside.count + crossing.count))
        for (i, t) in inside.enumerated() {
            _ = try pyramid.withTileAndMask(t) { bytes, mask in
                try writer.add(
                    overview: 0, col: t.col - range.minCol, row: t.row - range.minRow, tile: bytes, mask: mask)
            }
            if i % 64 == 63, !progress(Double(i) / total * 0.9) { throw ExtractError(.cancelled, "cancelled") }
        }
        // Edge tiles on every core, each worker with its own codec and copy of the polygon.
        let workers = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8, crossing.count))
        let failure = Mutex<Error?>(nil)
        let done = Atomic<Int>(0)
        let quality = pyramid.manifest.quality
        let firstRow = range.minRow
        let firstCol = range.minCol
        let edges = crossing
        DispatchQueue.concurrentPerform(iterations: workers) { w in
            do {
                var clipper = try TileClipper(polygonWKT: polygonWKT, size: size, quality: quality)
                for t in stride(from: w, to: edges.count, by: workers).map({ edges[$0] }) {
                    guard var rgba = try pyramid.decodeTile(t) else { continue }
                    let box = tms.bounds(of: t)
                    let kept = try clipper.add(
                        &rgba, transform: GeoTransform(originX: box.minX, originY: box.maxY, resolution: cellSize),
                        to: writer, overview: 0, col: t.col - firstCol, row: t.row - firstRow)
                    guard kept else { continue }
                    done.add(1, ordering: .relaxed)
                }
            } catch {
                failure.withLock { $0 = $0 ?? error }
            }
        }
        if let e = failure.withLock({ $0 }) { throw e }
        guard progress(Double(inside.count + done.load(ordering: .relaxed)) / total * 0.9) else {
            throw ExtractError(.cancelled, "cancelled")
        }
        for k in stride(from: 1, through: overviews, by: 1) {
            try writeOverview(k, to: writer, polygonWKT: polygonWKT) { part in
                progress(0.9 + 0.1 * (Double(k - 1) + part) / Double(overviews))
            }
        }
        guard try writer.finish() != nil else {
            throw ExtractError(.unprocessable, "no pyramid pixel falls in the polygon")
        }
    }

    /// Overview `k`, a row of its tiles at a time: the pyramid's tiles at level `z - k` under the
    /// row decoded into a strip, each overview tile cut from it at its whole-pixel offset, clipped
    /// to the polygon, and encoded, on every core.
    private func writeOverview(
        _ k: Int, to writer: ShardWriter, polygonWKT: String, progress: (Double) -> Bool
    ) throws {
        let size = pyramid.manifest.tileSize
        let level = range.z - k
        let resolution = cellSize * Double(1 << k)
        let (across, down) = ShardGeometry(
            originX: 0, originY: 0, resolution: 1, columns: range.colCount, rows: range.rowCount, epsg: epsg
        ).tiles(overview: k)
        // The extract's origin at `level`, in pixels from the grid's origin.
        let (ox, oy) = ((range.minCol * size) >> k, (range.minRow * size) >> k)
        let (c0, c1) = (ox / size, (ox + across * size - 1) / size)
        let stripWidth = (c1 - c0 + 1) * size
        let workers = max(1, min(ProcessInfo.processInfo.activeProcessorCount, 8))
        let quality = pyramid.manifest.quality
        var strip = [UInt8](repeating: 0, count: stripWidth * 2 * size * 4)
        for r in 0..<down {
            let y = oy + r * size
            let (r0, r1) = (y / size, (y + size - 1) / size)
            // Decode the (one or two) rows of pyramid tiles under this row of overview tiles.
            let sources = (r0...r1).flatMap { row in (c0...c1).map { TileCoordinate(z: level, col: $0, row: row) } }
            let failure = Mutex<Error?>(nil)
            guard progress(Double(r) / Double(down)) else { throw ExtractError(.cancelled, "cancelled") }
            try strip.withUnsafeMutableBufferPointer { out in
                out.update(repeating: 0)
                let target = UnsafeSendablePointer(out.baseAddress!)
                DispatchQueue.concurrentPerform(iterations: sources.count) { i in
                    let t = sources[i]
                    do {
                        guard let rgba = try pyramid.decodeTile(t) else { return }
                        let (x0, y0) = ((t.col - c0) * size, (t.row - r0) * size)
                        for line in 0..<size {
                            rgba.withUnsafeBufferPointer { p in
                                (target.pointer + ((y0 + line) * stripWidth + x0) * 4).update(
                                    from: p.baseAddress! + line * size * 4, count: size * 4)
                            }
                        }
                    } catch {
                        failure.withLock { $0 = $0 ?? error }
                    }
                }
                if let e = failure.withLock({ $0 }) { throw e }
                let source = UnsafeSendablePointer(out.baseAddress!)
                DispatchQueue.concurrentPerform(iterations: min(workers, across)) { w in
                    do {
                        var clipper = try TileClipper(polygonWKT: polygonWKT, size: size, quality: quality)
                        var tile = [UInt8](repeating: 0, count: size * size * 4)
                        for c in stride(from: w, to: across, by: workers) {
                            let (sx, sy) = (ox + c * size - c0 * size, y - r0 * size)
                            tile.withUnsafeMutableBufferPointer { p in
                                for line in 0..<size {
                                    (p.baseAddress! + line * size * 4).update(
                                        from: source.pointer + ((sy + line) * stripWidth + sx) * 4, count: size * 4)
                                }
                            }
                            let transform = GeoTransform(
                                originX: bounds.minX + Double(c * size) * resolution,
                                originY: bounds.maxY - Double(r * size) * resolution, resolution: resolution)
                            _ = try clipper.add(&tile, transform: transform, to: writer, overview: k, col: c, row: r)
                        }
                    } catch {
                        failure.withLock { $0 = $0 ?? error }
                    }
                }
                if let e = failure.withLock({ $0 }) { throw e }
            }
        }
    }
}

/// Clips a decoded tile to the polygon and adds it to the writer: outside pixels are not
/// delivered (black under a cleared mask bit), the rest encoded once. One per worker: it holds a
/// codec, its own copy of the polygon and its buffers.
private struct TileClipper {
    let codec: JPEGCodec
    let clip: Geometry
    let size: Int
    let quality: Int
    private var inPolygon: [UInt8]
    private var bits: [UInt8]

    init(polygonWKT: String, size: Int, quality: Int) throws {
        codec = try JPEGCodec()
        clip = try Geometry.fromWKT(polygonWKT)
        self.size = size
        self.quality = quality
        inPolygon = [UInt8](repeating: 0, count: size * size)
        bits = [UInt8](repeating: 0, count: size * size / 8)
    }

    /// Adds `rgba` (alpha 0 where there is no data) clipped to the polygon at `transform`; false,
    /// and nothing added, when no pixel is left.
    mutating func add(
        _ rgba: inout [UInt8], transform: GeoTransform, to writer: ShardWriter, overview: Int, col: Int, row: Int
    ) throws -> Bool {
        let size = size
        try inPolygon.withUnsafeMutableBufferPointer {
            try clip.rasterize(into: $0.baseAddress!, width: size, height: size, transform: transform)
        }
        var any = false
        for i in 0..<(size * size) {
            if inPolygon[i] == 0 || rgba[i * 4 + 3] == 0 {
                rgba[i * 4] = 0
                rgba[i * 4 + 1] = 0
                rgba[i * 4 + 2] = 0
                rgba[i * 4 + 3] = 0
            } else {
                any = true
            }
        }
        guard any else { return false }
        let mask = try rgba.withUnsafeBufferPointer { p in
            try bits.withUnsafeMutableBufferPointer { b in
                ShardWriter.packMask(p.baseAddress!, stride: size * 4, size: size, into: b.baseAddress!)
                return try Deflate.compress(UnsafeRawBufferPointer(b))
            }
        }
        try rgba.withUnsafeBufferPointer { p in
            try codec.encode(rgbx: p.baseAddress!, width: size, height: size, stride: size * 4, quality: quality) {
                jpeg in
                try mask.withUnsafeBytes {
                    try writer.add(overview: overview, col: col, row: row, tile: jpeg, mask: $0)
                }
            }
        }
        return true
    }
}
