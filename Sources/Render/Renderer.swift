import Foundation
import GeoGrid
import Pyramid
import Raster

/// An image to produce: a rectangle of a CRS at a pixel size.
public struct RenderWindow: Sendable {
    /// Bounds in `crs` units (easting/northing, or longitude/latitude for geographic CRSs).
    public var bounds: BoundingBox
    public var width: Int
    public var height: Int

    public init(bounds: BoundingBox, width: Int, height: Int) {
        self.bounds = bounds
        self.width = width
        self.height = height
    }

    public var transform: GeoTransform {
        GeoTransform([bounds.minX, bounds.width / Double(width), 0, bounds.maxY, 0, -bounds.height / Double(height)])
    }
}

/// Reads a region of a pyramid at any CRS and pixel size: picks the level whose pixels are the
/// smallest not finer than needed (never 5 cm pixels for a 1 m image), decodes only the tiles
/// under the window, and reprojects them with the same coarse-grid bilinear resampler as the tiler.
/// One per task at a time (holds a PROJ transform): it may move between threads, never be shared.
public final class Renderer: @unchecked Sendable {
    public let pyramid: any PyramidSource
    public let crs: SpatialReference
    private let gridCRS: SpatialReference
    private let toGrid: CoordinateTransform?
    private let reprojector: Reprojector
    /// Tiles decoded at most per call: bounds memory whatever the window (≈ 1 GiB of RGBA).
    public static let maxTiles = 16_384

    /// A renderer of `pyramid` into images in `crs`.
    public init(pyramid: any PyramidSource, crs: SpatialReference) throws {
        self.pyramid = pyramid
        self.crs = crs
        gridCRS = try SpatialReference(pyramid.manifest.tileMatrixSet.crs)
        toGrid = crs.isSame(as: gridCRS) ? nil : try CoordinateTransform(from: crs, to: gridCRS)
        reprojector = Reprojector(transform: toGrid, step: 16)
    }

    /// The window's bounds in the grid's CRS.
    public func gridBounds(of window: RenderWindow) throws -> BoundingBox {
        guard let toGrid else { return window.bounds }
        return try toGrid.transform(window.bounds)
    }

    /// The level read for a window: the coarsest whose cell is no larger than the output pixel.
    public func level(for window: RenderWindow) throws -> Int {
        let box = try gridBounds(of: window)
        let pixel = min(box.width / Double(window.width), box.height / Double(window.height))
        let m = pyramid.manifest
        var z = m.minZoom
        for candidate in m.minZoom...m.maxZoom {
            guard let matrix = m.tileMatrixSet.matrix(candidate) else { break }
            z = candidate
            if matrix.cellSize <= pixel * 1.0001 { break }
        }
        return z
    }

    /// Renders into `output` (RGBA, `window.width * 4` bytes per row), which is cleared first.
    /// Returns false when no pyramid pixel falls in the window.
    @discardableResult
    public func render(_ window: RenderWindow, into output: UnsafeMutablePointer<UInt8>) throws -> Bool {
        output.initialize(repeating: 0, count: window.width * window.height * 4)
        let m = pyramid.manifest
        let z = try level(for: window)
        guard let matrix = m.tileMatrixSet.matrix(z), let limits = m.limits(z: z) else { return false }
        let box = try gridBounds(of: window)
        // One cell of margin so the bilinear kernel sees its neighbours at the edges.
        guard var range = m.tileMatrixSet.tiles(covering: box.expanded(by: matrix.cellSize * 2), z: z) else {
            return false
        }
        range = TileRange(
            z: z, minCol: max(range.minCol, limits.minCol), minRow: max(range.minRow, limits.minRow),
            maxCol: min(range.maxCol, limits.maxCol), maxRow: min(range.maxRow, limits.maxRow))
        guard !range.isEmpty else { return false }
        guard range.colCount * range.rowCount <= Self.maxTiles else {
            throw RasterError("the window needs \(range.colCount * range.rowCount) tiles; render it in parts")
        }
        let size = m.tileSize
        let origin = m.tileMatrixSet.bounds(of: range)
        if let shift = aligned(window, origin: origin, cellSize: matrix.cellSize) {
            return try copyTiles(range, shift: shift, window: window, into: output)
        }
        let mw = range.colCount * size
        let mh = range.rowCount * size
        let mosaic = UnsafeMutablePointer<UInt8>.allocate(capacity: mw * mh * 4)
        defer { mosaic.deallocate() }
        mosaic.initialize(repeating: 0, count: mw * mh * 4)
        var any = false
        for t in range.tiles {
            guard let rgba = try pyramid.decodeTile(t) else { continue }
            any = true
            let x0 = (t.col - range.minCol) * size
            let y0 = (t.row - range.minRow) * size
            rgba.withUnsafeBufferPointer { src in
                for y in 0..<size {
                    (mosaic + ((y0 + y) * mw + x0) * 4).update(from: src.baseAddress! + y * size * 4, count: size * 4)
                }
            }
        }
        guard any else { return false }
        let source = GeoTransform(originX: origin.minX, originY: origin.maxY, resolution: matrix.cellSize)
        guard
            let grid = reprojector.sourceGrid(
                output: window.transform, width: window.width, height: window.height, source: source)
        else { throw RasterError("the window cannot be projected onto the pyramid's grid") }
        reprojector.resample(
            grid: grid, offsetX: 0, offsetY: 0, source: mosaic, sourceWidth: mw, sourceHeight: mh, output: output,
            width: window.width, height: window.height, outputStride: window.width * 4)
        return true
    }
}

extension Renderer {
    /// When the window is the grid itself — same CRS, the level's pixel size, corners on the
    /// level's pixel lattice — the offset in pixels from the range's top-left corner to the
    /// window's; nil otherwise. Resampling would then only copy pixels.
    func aligned(_ window: RenderWindow, origin: BoundingBox, cellSize: Double) -> (x: Int, y: Int)? {
        guard toGrid == nil else { return nil }
        let px = window.bounds.width / Double(window.width)
        let py = window.bounds.height / Double(window.height)
        guard abs(px - cellSize) <= cellSize * 1e-9, abs(py - cellSize) <= cellSize * 1e-9 else { return nil }
        let dx = (window.bounds.minX - origin.minX) / cellSize
        let dy = (origin.maxY - window.bounds.maxY) / cellSize
        guard abs(dx - dx.rounded()) < 1e-6, abs(dy - dy.rounded()) < 1e-6 else { return nil }
        return (Int(bounded: dx, .toNearestOrAwayFromZero), Int(bounded: dy, .toNearestOrAwayFromZero))
    }

    /// Decodes each tile of `range` straight into the part of `output` it covers.
    func copyTiles(
        _ range: TileRange, shift: (x: Int, y: Int), window: RenderWindow, into output: UnsafeMutablePointer<UInt8>
    ) throws -> Bool {
        let size = pyramid.manifest.tileSize
        var any = false
        for t in range.tiles {
            // The tile's top-left corner in window pixels.
            let x0 = (t.col - range.minCol) * size - shift.x
            let y0 = (t.row - range.minRow) * size - shift.y
            let left = max(0, x0)
            let right = min(window.width, x0 + size)
            let top = max(0, y0)
            let bottom = min(window.height, y0 + size)
            guard left < right, top < bottom, let rgba = try pyramid.decodeTile(t) else { continue }
            any = true
            rgba.withUnsafeBufferPointer { src in
                for y in top..<bottom {
                    (output + (y * window.width + left) * 4).update(
                        from: src.baseAddress! + ((y - y0) * size + (left - x0)) * 4, count: (right - left) * 4)
                }
            }
        }
        return any
    }
}

extension GeoTransform {
    /// A north-up transform with different pixel width and height.
    public init(originX: Double, originY: Double, pixelWidth: Double, pixelHeight: Double) {
        self.init([originX, pixelWidth, 0, originY, 0, -pixelHeight])
    }
}
