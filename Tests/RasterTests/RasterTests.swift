import Foundation
import GeoGrid
import TestSupport
import Testing

@testable import Raster

/// A smooth, textured RGBA test image: gradients plus a checker of 8-pixel squares.
private func testImage(width: Int, height: Int) -> [UInt8] {
    var px = [UInt8](repeating: 255, count: width * height * 4)
    for y in 0..<height {
        for x in 0..<width {
            let i = (y * width + x) * 4
            let checker = ((x / 8) + (y / 8)) % 2 == 0 ? 40 : 0
            px[i] = UInt8(truncatingIfNeeded: (x * 255 / max(1, width - 1)) / 2 + checker)
            px[i + 1] = UInt8(truncatingIfNeeded: (y * 255 / max(1, height - 1)) / 2 + checker)
            px[i + 2] = UInt8(truncatingIfNeeded: ((x + y) * 255 / max(1, width + height - 2)) / 2 + 60)
        }
    }
    return px
}

/// Peak signal-to-noise ratio over the RGB channels of two RGBA buffers.
private func psnr(_ a: [UInt8], _ b: [UInt8]) -> Double {
    var sum = 0.0
    var n = 0
    for i in stride(from: 0, to: a.count, by: 4) {
        for k in 0..<3 {
            let d = Double(a[i + k]) - Double(b[i + k])
            sum += d * d
            n += 1
        }
    }
    let mse = sum / Double(n)
    return mse == 0 ? .infinity : 10 * log10(255 * 255 / mse)
}

@Suite(.blocking) struct CodecTests {
    @Test func jpegRoundTripKeepsPixelsAndSize() throws {
        let codec = try JPEGCodec()
        let src = testImage(width: 256, height: 256)
        let jpeg: [UInt8] = try src.withUnsafeBufferPointer { p in
            try codec.encode(rgbx: p.baseAddress!, width: 256, height: 256, stride: 1024, quality: 90) { Array($0) }
        }
        // A standalone baseline stream: SOI … EOI.
        #expect(jpeg.prefix(2) == [0xFF, 0xD8])
        #expect(jpeg.suffix(2) == [0xFF, 0xD9])
        let dims = try jpeg.withUnsafeBytes { try codec.dimensions(of: $0) }
        #expect(dims.width == 256 && dims.height == 256)
        var back = [UInt8](repeating: 0, count: 256 * 256 * 4)
        try jpeg.withUnsafeBytes { j in
            try back.withUnsafeMutableBufferPointer {
                try codec.decode(j, into: $0.baseAddress!, width: 256, height: 256, stride: 1024)
            }
        }
        #expect(psnr(src, back) >= 35)
        #expect(back[3] == 255)
    }

    @Test func jpegRejectsGarbage() throws {
        let codec = try JPEGCodec()
        let garbage: [UInt8] = [0x00, 0x11, 0x22, 0x33, 0x44]
        #expect(throws: RasterError.self) { try garbage.withUnsafeBytes { try codec.dimensions(of: $0) } }
    }

    @Test func webpLosslessIsExactAndKeepsAlpha() throws {
        var src = testImage(width: 64, height: 48)
        for y in 0..<48 { for x in 0..<16 { src[(y * 64 + x) * 4 + 3] = 0 } }
        let webp = try src.withUnsafeBufferPointer {
            try WebPCodec.encode(
                rgba: $0.baseAddress!, width: 64, height: 48, stride: 256, quality: 100, lossless: true)
        }
        #expect(Array(webp[8..<12]) == Array("WEBP".utf8))
        var back = [UInt8](repeating: 7, count: src.count)
        try webp.withUnsafeBytes { w in
            try back.withUnsafeMutableBufferPointer {
                try WebPCodec.decode(w, into: $0.baseAddress!, width: 64, height: 48, stride: 256)
            }
        }
        // Transparent pixels may carry any colour; opaque ones must be exact.
        for i in stride(from: 0, to: src.count, by: 4) {
            #expect(back[i + 3] == src[i + 3])
            if src[i + 3] == 255 { #expect(Array(back[i..<i + 3]) == Array(src[i..<i + 3])) }
        }
        #expect(throws: RasterError.self) {
            try webp.withUnsafeBytes { w in
                try back.withUnsafeMutableBufferPointer {
                    try WebPCodec.decode(w, into: $0.baseAddress!, width: 32, height: 48, stride: 256)
                }
            }
        }
    }

    @Test func pngEncodesRGBAThatGDALReadsBack() throws {
        var src = testImage(width: 32, height: 32)
        src[3] = 0
        let png = try src.withUnsafeMutableBufferPointer {
            try PNGCodec.encode(rgba: $0.baseAddress!, width: 32, height: 32, stride: 128)
        }
        #expect(Array(png.prefix(4)) == [0x89, 0x50, 0x4E, 0x47])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("dallage-\(UUID()).png").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(png).write(to: URL(fileURLWithPath: path))
        let ds = try Dataset.open(path)
        #expect(ds.width == 32 && ds.height == 32 && ds.bandCount == 4)
        var back = [UInt8](repeating: 0, count: 32 * 32 * 4)
        try back.withUnsafeMutableBufferPointer {
            try ds.read(
                x: 0, y: 0, width: 32, height: 32, bands: [1, 2, 3, 4], into: $0.baseAddress!, bufferWidth: 32,
                bufferHeight: 32)
        }
        #expect(back == src)
    }

    @Test func deflateRoundTripAndGzipHeader() throws {
        let text = Array(String(repeating: "<TileMatrix>2154_5cm</TileMatrix>", count: 200).utf8)
        let packed = try text.withUnsafeBytes { try Deflate.compress($0) }
        #expect(packed.count < text.count / 10)
        var back = [UInt8](repeating: 0, count: text.count)
        try packed.withUnsafeBytes { p in try back.withUnsafeMutableBytes { try Deflate.decompress(p, into: $0) } }
        #expect(back == text)
        let gz = try text.withUnsafeBytes { try Deflate.gzip($0) }
        #expect(gz.prefix(2) == [0x1F, 0x8B])
        // The gzip trailer carries the CRC-32 and the length of the input.
        let crc = text.withUnsafeBytes { Deflate.crc32($0) }
        let trailer = Array(gz.suffix(8))
        let storedCRC = trailer[0..<4].enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << (8 * $1.offset) }
        #expect(storedCRC == crc)
        #expect(
            "123456789".utf8.withContiguousStorageIfAvailable { Deflate.crc32(UnsafeRawBufferPointer($0)) }
                == 0xCBF4_3926)
    }
}

@Suite(.blocking) struct ProjectionTests {
    @Test func lambert93ToWGS84KnownPoint() throws {
        // The Lambert-93 false origin (3°E, 46.5°N) sits at (700000, 6600000).
        let t = try CoordinateTransform(from: SpatialReference(epsg: 2154), to: SpatialReference.wgs84())
        var x = [700_000.0]
        var y = [6_600_000.0]
        #expect(t.transform(x: &x, y: &y) == [true])
        // Geographic CRSs are used longitude first (traditional GIS order).
        #expect(abs(x[0] - 3) < 1e-7 && abs(y[0] - 46.5) < 1e-7)
    }

    @Test func cc49RoundTripsThroughLambert93() throws {
        let l93 = try SpatialReference(epsg: 2154)
        let cc49 = try SpatialReference(epsg: 3949)
        #expect(cc49.epsg == 3949)
        #expect(!cc49.isSame(as: l93))
        let there = try CoordinateTransform(from: l93, to: cc49)
        let back = try CoordinateTransform(from: cc49, to: l93)
        var x = [704_000.0, 652_345.5]
        var y = [7_060_000.0, 6_862_123.25]
        let (x0, y0) = (x, y)
        there.transform(x: &x, y: &y)
        // CC49's false northing is 8 200 000 m: the points move by hundreds of kilometres…
        #expect(abs(y[0] - y0[0]) > 100_000)
        back.transform(x: &x, y: &y)
        // …and come back to within a millimetre.
        for i in 0..<2 { #expect(abs(x[i] - x0[i]) < 1e-3 && abs(y[i] - y0[i]) < 1e-3) }
    }

    @Test func unknownCRSIsAClearError() {
        #expect(throws: RasterError.self) { try SpatialReference("EPSG:999999") }
    }
}

@Suite(.blocking) struct ReprojectorTests {
    /// An opaque square whose red grows by `step` per column and green by `step` per row.
    static func gradient(side: Int, step: Int) -> [UInt8] {
        var src = [UInt8](repeating: 255, count: side * side * 4)
        for y in 0..<side {
            for x in 0..<side {
                src[(y * side + x) * 4] = UInt8(x * step)
                src[(y * side + x) * 4 + 1] = UInt8(y * step)
            }
        }
        return src
    }

    /// Resamples `source` into a new transparent RGBA image of `width`×`height`.
    static func resample(
        _ r: Reprojector, grid: (xs: [Double], ys: [Double], columns: Int, rows: Int), source: [UInt8],
        sourceWidth: Int, sourceHeight: Int, width: Int, height: Int
    ) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: width * height * 4)
        source.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { o in
                r.resample(
                    grid: grid, offsetX: 0, offsetY: 0, source: s.baseAddress!, sourceWidth: sourceWidth,
                    sourceHeight: sourceHeight, output: o.baseAddress!, width: width, height: height,
                    outputStride: width * 4)
            }
        }
        return out
    }

    /// Without a CRS change, a half-resolution output samples every second source pixel
    /// centre: each output pixel is the mean of a 2×2 block along one axis pair.
    @Test func sameCRSResampleHitsExpectedSourcePixels() throws {
        let sw = 64
        let sh = 64
        let src = Self.gradient(side: sw, step: 4)
        let source = GeoTransform(originX: 1000, originY: 2000, resolution: 1)
        // Output pixel size 1 m shifted by half a pixel: bilinear lands exactly between two columns.
        let output = GeoTransform(originX: 1010.5, originY: 1990, resolution: 1)
        let r = Reprojector(transform: nil, step: 8)
        let grid = try #require(r.sourceGrid(output: output, width: 16, height: 16, source: source))
        let out = Self.resample(r, grid: grid, source: src, sourceWidth: sw, sourceHeight: sh, width: 16, height: 16)
        for y in 0..<16 {
            for x in 0..<16 {
                let i = (y * 16 + x) * 4
                // Output centre x = 1011 + x → source column 10.5 + x: mean of columns 10+x and 11+x.
                #expect(Int(out[i]) == (10 + x) * 4 + 2)
                #expect(Int(out[i + 1]) == (10 + y) * 4)
                #expect(out[i + 3] == 255)
            }
        }
    }

    /// An output whose size is not a multiple of the grid step, on the source's own pixels: every
    /// pixel, the last partial grid cell included, is the source pixel under it.
    @Test func partialGridCellsSampleTheRightPixels() throws {
        let sw = 40
        let src = Self.gradient(side: sw, step: 6)
        let source = GeoTransform(originX: 0, originY: 40, resolution: 1)
        let output = GeoTransform(originX: 3, originY: 35, resolution: 1)
        let (w, h) = (29, 21)
        let r = Reprojector(transform: nil, step: 8)
        let grid = try #require(r.sourceGrid(output: output, width: w, height: h, source: source))
        let out = Self.resample(r, grid: grid, source: src, sourceWidth: sw, sourceHeight: sw, width: w, height: h)
        for y in 0..<h {
            for x in 0..<w {
                #expect(Int(out[(y * w + x) * 4]) == (x + 3) * 6, "x \(x) y \(y)")
                #expect(Int(out[(y * w + x) * 4 + 1]) == (y + 5) * 6, "x \(x) y \(y)")
            }
        }
    }

    @Test func outsideTheSourceStaysTransparent() throws {
        let src = (0..<64).flatMap { _ in [UInt8](arrayLiteral: 200, 150, 100, 255) }
        let source = GeoTransform(originX: 0, originY: 8, resolution: 1)
        let output = GeoTransform(originX: 4, originY: 8, resolution: 1)
        let r = Reprojector(transform: nil, step: 4)
        let grid = try #require(r.sourceGrid(output: output, width: 8, height: 8, source: source))
        let out = Self.resample(r, grid: grid, source: src, sourceWidth: 8, sourceHeight: 8, width: 8, height: 8)
        for y in 0..<8 {
            #expect(out[(y * 8 + 2) * 4 + 3] == 255)
            // Beyond the source's right edge (plus the half-pixel clamp) nothing is written.
            #expect(out[(y * 8 + 6) * 4 + 3] == 0)
        }
    }

    /// The coarse transform grid interpolates PROJ between points every `step` pixels: for
    /// Lambert-93 → WebMercator over a 256-pixel tile it stays within 1/100 pixel of exact PROJ.
    @Test func coarseGridMatchesExactProjection() throws {
        let l93 = try SpatialReference(epsg: 2154)
        let pm = try SpatialReference(epsg: 3857)
        let toSource = try CoordinateTransform(from: pm, to: l93)
        // A z19 PM tile near Lille (≈ 0.3 m pixels) over a 5 cm Lambert-93 source.
        let output = GeoTransform(originX: 340_000, originY: 6_540_000, resolution: 0.2986)
        let source = GeoTransform(originX: 700_000, originY: 7_070_000, resolution: 0.05)
        let r = Reprojector(transform: try CoordinateTransform(from: pm, to: l93), step: 32)
        let grid = try #require(r.sourceGrid(output: output, width: 256, height: 256, source: source))
        var worst = 0.0
        for (px, py) in [(17, 5), (100, 200), (255, 255), (31, 63), (200, 17)] {
            let gx = px / 32
            let gy = py / 32
            let tx = Double(px % 32) / 32
            let ty = Double(py % 32) / 32
            func at(_ c: Int, _ r: Int) -> (Double, Double) {
                (grid.xs[r * grid.columns + c], grid.ys[r * grid.columns + c])
            }
            let (a, b, c, d) = (at(gx, gy), at(gx + 1, gy), at(gx, gy + 1), at(gx + 1, gy + 1))
            let ix = (a.0 * (1 - tx) + b.0 * tx) * (1 - ty) + (c.0 * (1 - tx) + d.0 * tx) * ty
            let iy = (a.1 * (1 - tx) + b.1 * tx) * (1 - ty) + (c.1 * (1 - tx) + d.1 * tx) * ty
            var x = [output.originX + (Double(px) + 0.5) * output.pixelWidth]
            var y = [output.originY + (Double(py) + 0.5) * output.pixelHeight]
            toSource.transform(x: &x, y: &y)
            let ex = (x[0] - source.originX) / source.pixelWidth
            let ey = (y[0] - source.originY) / source.pixelHeight
            // Compare in output pixels (one output pixel ≈ 6 source pixels).
            worst = max(worst, hypot(ix - ex, iy - ey) * 0.05 / 0.2986)
        }
        #expect(worst < 0.01)
    }
}
