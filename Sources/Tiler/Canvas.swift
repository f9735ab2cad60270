/// A square RGBA image in memory, pixel-interleaved, owned and reused by one worker.
final class Canvas {
    let side: Int
    let pixels: UnsafeMutablePointer<UInt8>
    var stride: Int { side * 4 }

    init(side: Int) {
        self.side = side
        pixels = .allocate(capacity: side * side * 4)
        clear()
    }

    deinit { pixels.deallocate() }

    /// Makes every pixel transparent black.
    func clear() { pixels.initialize(repeating: 0, count: side * side * 4) }

    /// Clears a square sub-area.
    func clear(x: Int, y: Int, size: Int) {
        for r in 0..<size { (pixels + (y + r) * stride + x * 4).initialize(repeating: 0, count: size * 4) }
    }
}

/// Pixel kernels of the pyramid build: tight loops over raw buffers, no allocation.
enum PixelOps {
    /// Halves `src` (2w×2h at `srcStride`) into w×h at `dst`, averaging the valid area: colours
    /// are weighted by alpha so transparent pixels never darken an edge, alpha is the covered share.
    static func downsample(
        _ src: UnsafePointer<UInt8>, srcStride: Int, into dst: UnsafeMutablePointer<UInt8>, dstStride: Int,
        width: Int, height: Int, nearest: Bool = false
    ) {
        if nearest {
            // Nearest neighbour: the top-left pixel of each 2×2 block.
            for y in 0..<height {
                let r0 = src + 2 * y * srcStride
                let d = dst + y * dstStride
                for x in 0..<width {
                    (d + x * 4).update(from: r0 + x * 8, count: 4)
                }
            }
            return
        }
        for y in 0..<height {
            let r0 = src + 2 * y * srcStride
            let r1 = r0 + srcStride
            var d = dst + y * dstStride
            var p = 0
            for _ in 0..<width {
                let a0 = UInt32(r0[p + 3])
                let a1 = UInt32(r0[p + 7])
                let a2 = UInt32(r1[p + 3])
                let a3 = UInt32(r1[p + 7])
                let asum = a0 &+ a1 &+ a2 &+ a3
                if asum == 1020 {
                    for c in 0..<3 {
                        let s = UInt32(r0[p + c]) &+ UInt32(r0[p + 4 + c]) &+ UInt32(r1[p + c]) &+ UInt32(r1[p + 4 + c])
                        d[c] = UInt8(truncatingIfNeeded: (s &+ 2) >> 2)
                    }
                    d[3] = 255
                } else if asum == 0 {
                    d[0] = 0
                    d[1] = 0
                    d[2] = 0
                    d[3] = 0
                } else {
                    for c in 0..<3 {
                        let s =
                            UInt32(r0[p + c]) &* a0 &+ UInt32(r0[p + 4 + c]) &* a1 &+ UInt32(r1[p + c]) &* a2
                            &+ UInt32(r1[p + 4 + c]) &* a3
                        d[c] = UInt8(truncatingIfNeeded: (s &+ asum / 2) / asum)
                    }
                    d[3] = UInt8(truncatingIfNeeded: (asum &+ 2) >> 2)
                }
                p &+= 8
                d += 4
            }
        }
    }

    /// The number of valid pixels (alpha ≥ 128) of a `size`×`size` tile.
    static func validCount(_ p: UnsafePointer<UInt8>, stride: Int, size: Int) -> Int {
        var n = 0
        for y in 0..<size {
            let row = p + y * stride
            var i = 3
            for _ in 0..<size {
                n &+= Int(row[i] >> 7)
                i &+= 4
            }
        }
        return n
    }

    /// Copies a tile into `scratch` and replaces the colour of invalid pixels by the nearest valid
    /// colour of the row (or of the nearest row), so JPEG ringing at coverage edges stays in the
    /// image's own colours.
    static func prepareEdgeTile(
        _ p: UnsafePointer<UInt8>, stride: Int, size: Int, scratch: UnsafeMutablePointer<UInt8>
    ) {
        let s = size * 4
        var rowHasValid = [Bool](repeating: false, count: size)
        for y in 0..<size {
            let src = p + y * stride
            let dst = scratch + y * s
            dst.update(from: src, count: s)
            var last = -1
            for x in 0..<size where dst[x * 4 + 3] >= 128 {
                if last < 0 {
                    for k in 0..<x { copyPixel(dst, from: x, to: k) }
                } else if x - last > 1 {
                    let mid = (last + x) / 2
                    for k in (last + 1)..<x { copyPixel(dst, from: k <= mid ? last : x, to: k) }
                }
                last = x
            }
            if last >= 0 {
                rowHasValid[y] = true
                for k in (last + 1)..<size { copyPixel(dst, from: last, to: k) }
            }
        }
        // Rows with no valid pixel copy the nearest row that has one.
        guard let firstValid = rowHasValid.firstIndex(of: true) else { return }
        var source = firstValid
        for y in 0..<size {
            if rowHasValid[y] {
                source = y
            } else {
                let from = y < firstValid ? firstValid : source
                (scratch + y * s).update(from: scratch + from * s, count: s)
            }
        }
    }

    @inline(__always)
    private static func copyPixel(_ row: UnsafeMutablePointer<UInt8>, from: Int, to: Int) {
        row[to * 4] = row[from * 4]
        row[to * 4 + 1] = row[from * 4 + 1]
        row[to * 4 + 2] = row[from * 4 + 2]
    }

    /// Expands a 1-bit mask tile into the alpha bytes of an RGBA tile.
    static func applyMask(_ bits: UnsafePointer<UInt8>, to p: UnsafeMutablePointer<UInt8>, stride: Int, size: Int) {
        let rowBytes = size / 8
        for y in 0..<size {
            let row = p + y * stride
            for x in 0..<size {
                let bit = (bits[y * rowBytes + x >> 3] >> (7 - UInt8(x & 7))) & 1
                row[x * 4 + 3] = bit == 1 ? 255 : 0
            }
        }
    }
}
