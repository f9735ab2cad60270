import Foundation
import GeoGrid

/// Reprojects an RGBA image into an RGBA canvas with bilinear, alpha-weighted sampling.
///
/// PROJ is called only on a coarse grid of points (every `step` output pixels); positions in
/// between are interpolated linearly, which for the map projections used here errs by far less
/// than a hundredth of a pixel over 64 pixels. Not thread-safe (holds a PROJ transform).
public final class Reprojector {
    /// Output pixels between exact PROJ points.
    public let step: Int
    /// Nearest neighbour instead of bilinear.
    public let nearest: Bool
    private let transform: CoordinateTransform?

    /// `transform` maps output CRS → source CRS; nil when both are the same.
    public init(transform: CoordinateTransform?, step: Int = 32, nearest: Bool = false) {
        self.transform = transform
        self.step = step
        self.nearest = nearest
    }

    /// The source-pixel position of output pixel centres on the coarse grid; nil when PROJ fails
    /// for every point. Points PROJ cannot transform (beyond a projection's domain: the far side
    /// of a conic, the poles of Mercator) are NaN, and `resample` leaves their cells transparent.
    public func sourceGrid(
        output: GeoTransform, width: Int, height: Int, source: GeoTransform
    ) -> (xs: [Double], ys: [Double], columns: Int, rows: Int)? {
        let gc = (width + step - 1) / step + 1
        let gr = (height + step - 1) / step + 1
        var xs = [Double](repeating: 0, count: gc * gr)
        var ys = xs
        for r in 0..<gr {
            for c in 0..<gc {
                // Exactly `step` apart, the last point past the edge when the size is not a
                // multiple of it: `resample` interpolates on that spacing.
                let px = Double(c * step) + 0.5
                let py = Double(r * step) + 0.5
                xs[r * gc + c] = output.originX + px * output.pixelWidth
                ys[r * gc + c] = output.originY + py * output.pixelHeight
            }
        }
        if let transform {
            let ok = transform.transform(x: &xs, y: &ys)
            guard ok.contains(true) else { return nil }
            for i in ok.indices where !ok[i] {
                xs[i] = .nan
                ys[i] = .nan
            }
        }
        for i in xs.indices {
            xs[i] = (xs[i] - source.originX) / source.pixelWidth
            ys[i] = (ys[i] - source.originY) / source.pixelHeight
        }
        return (xs, ys, gc, gr)
    }

    /// Samples `source` (RGBA, `sourceWidth`×`sourceHeight`, positions relative to `(offsetX, offsetY)`)
    /// into `output` wherever the output is still transparent.
    public func resample(
        grid: (xs: [Double], ys: [Double], columns: Int, rows: Int), offsetX: Int, offsetY: Int,
        source: UnsafePointer<UInt8>, sourceWidth: Int, sourceHeight: Int,
        output: UnsafeMutablePointer<UInt8>, width: Int, height: Int, outputStride: Int
    ) {
        let gc = grid.columns
        let sw = sourceWidth
        let sstride = sw * 4
        grid.xs.withUnsafeBufferPointer { gx in
            grid.ys.withUnsafeBufferPointer { gy in
                for y in 0..<height {
                    let gr = y / step
                    let ty = Double(y - gr * step) / Double(step)
                    let row = output + y * outputStride
                    var x = 0
                    while x < width {
                        let gcol = x / step
                        let end = min(width, (gcol + 1) * step)
                        // Corner positions of this grid cell, interpolated down to row y.
                        let i00 = gr * gc + gcol
                        let i10 = i00 + 1
                        let i01 = i00 + gc
                        let i11 = i01 + 1
                        let lx0 = gx[i00] + (gx[i01] - gx[i00]) * ty - Double(offsetX) - 0.5
                        let ly0 = gy[i00] + (gy[i01] - gy[i00]) * ty - Double(offsetY) - 0.5
                        let lx1 = gx[i10] + (gx[i11] - gx[i10]) * ty - Double(offsetX) - 0.5
                        let ly1 = gy[i10] + (gy[i11] - gy[i10]) * ty - Double(offsetY) - 0.5
                        // A cell with a corner PROJ could not place, or placed absurdly far (the
                        // fixed-point stepping below needs |position| < 2^40), stays transparent.
                        let far = 1e9
                        guard abs(lx0) < far, abs(ly0) < far, abs(lx1) < far, abs(ly1) < far else {
                            x = end
                            continue
                        }
                        let dx = (lx1 - lx0) / Double(step)
                        let dy = (ly1 - ly0) / Double(step)
                        let first = Double(x - gcol * step)
                        // 16.16 fixed point: integer stepping, floor by arithmetic shift.
                        var sxf = Int(((lx0 + dx * first) * 65536).rounded())
                        var syf = Int(((ly0 + dy * first) * 65536).rounded())
                        let dxf = Int((dx * 65536).rounded())
                        let dyf = Int((dy * 65536).rounded())
                        if nearest {
                            // Round to the nearest source pixel: shift by half a pixel, zero weights.
                            sxf &+= 32768
                            syf &+= 32768
                        }
                        let weightMask = nearest ? 0 : 0xFF
                        while x < end {
                            let o = row + x &* 4
                            if o[3] != 255 {
                                let x0 = sxf >> 16
                                let y0 = syf >> 16
                                if x0 >= 0 && y0 >= 0 && x0 < sw - 1 && y0 < sourceHeight - 1 {
                                    let wx = (sxf >> 8) & weightMask
                                    let wy = (syf >> 8) & weightMask
                                    let p00 = source + (y0 &* sstride &+ x0 &* 4)
                                    let p01 = p00 + sstride
                                    Self.blend(p00, p00 + 4, p01, p01 + 4, wx: wx, wy: wy, into: o)
                                } else if x0 >= -1 && y0 >= -1 && x0 < sw && y0 < sourceHeight {
                                    // Along the source edge: clamp to the border pixels.
                                    let cx0 = min(max(x0, 0), sw - 1)
                                    let cy0 = min(max(y0, 0), sourceHeight - 1)
                                    let cx1 = min(max(x0 + 1, 0), sw - 1)
                                    let cy1 = min(max(y0 + 1, 0), sourceHeight - 1)
                                    Self.blend(
                                        source + cy0 * sstride + cx0 * 4, source + cy0 * sstride + cx1 * 4,
                                        source + cy1 * sstride + cx0 * 4, source + cy1 * sstride + cx1 * 4,
                                        wx: (sxf >> 8) & weightMask, wy: (syf >> 8) & weightMask, into: o)
                                }
                            }
                            x &+= 1
                            sxf &+= dxf
                            syf &+= dyf
                        }
                    }
                }
            }
        }
    }

    /// Bilinear blend of four RGBA pixels with 8-bit weights; colours weighted by alpha so
    /// transparent neighbours never bleed into the edge.
    @inline(__always)
    static func blend(
        _ p00: UnsafePointer<UInt8>, _ p10: UnsafePointer<UInt8>, _ p01: UnsafePointer<UInt8>,
        _ p11: UnsafePointer<UInt8>, wx: Int, wy: Int, into o: UnsafeMutablePointer<UInt8>
    ) {
        let w00 = (256 &- wx) &* (256 &- wy)
        let w10 = wx &* (256 &- wy)
        let w01 = (256 &- wx) &* wy
        let w11 = wx &* wy
        if p00[3] & p10[3] & p01[3] & p11[3] == 255 {
            for k in 0..<3 {
                let v = Int(p00[k]) &* w00 &+ Int(p10[k]) &* w10 &+ Int(p01[k]) &* w01 &+ Int(p11[k]) &* w11
                o[k] = UInt8(truncatingIfNeeded: (v &+ 32768) >> 16)
            }
            o[3] = 255
            return
        }
        let a00 = w00 &* Int(p00[3])
        let a10 = w10 &* Int(p10[3])
        let a01 = w01 &* Int(p01[3])
        let a11 = w11 &* Int(p11[3])
        let a = a00 &+ a10 &+ a01 &+ a11
        if a < 32768 { return }
        for k in 0..<3 {
            let v = Int(p00[k]) &* a00 &+ Int(p10[k]) &* a10 &+ Int(p01[k]) &* a01 &+ Int(p11[k]) &* a11
            o[k] = UInt8(truncatingIfNeeded: min(255, (v &+ a / 2) / a))
        }
        o[3] = UInt8(truncatingIfNeeded: min(255, (a &+ 32768) >> 16))
    }
}
