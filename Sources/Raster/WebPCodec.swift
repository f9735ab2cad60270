import CWebP
import Foundation

/// libwebp encoding and decoding of RGBA tiles.
public enum WebPCodec {
    /// Encodes RGBA pixels; `quality` 100 with `lossless` keeps them exactly.
    public static func encode(
        rgba pixels: UnsafePointer<UInt8>, width: Int, height: Int, stride: Int, quality: Int, lossless: Bool = false
    ) throws -> [UInt8] {
        var out: UnsafeMutablePointer<UInt8>? = nil
        let size =
            lossless
            ? WebPEncodeLosslessRGBA(pixels, Int32(width), Int32(height), Int32(stride), &out)
            : WebPEncodeRGBA(pixels, Int32(width), Int32(height), Int32(stride), Float(quality), &out)
        defer { WebPFree(out) }
        guard size > 0, let out else { throw RasterError("WebP encoding failed") }
        return Array(UnsafeBufferPointer(start: out, count: size))
    }

    /// Decodes a WebP stream into RGBA pixels at `pixels` with `stride`.
    public static func decode(
        _ data: UnsafeRawBufferPointer, into pixels: UnsafeMutablePointer<UInt8>, width: Int, height: Int, stride: Int
    ) throws {
        var w: Int32 = 0
        var h: Int32 = 0
        let base = data.baseAddress?.assumingMemoryBound(to: UInt8.self)
        guard WebPGetInfo(base, data.count, &w, &h) != 0, Int(w) == width, Int(h) == height else {
            throw RasterError("not a \(width)×\(height) WebP image")
        }
        guard WebPDecodeRGBAInto(base, data.count, pixels, stride * height, Int32(stride)) != nil else {
            throw RasterError("WebP decoding failed")
        }
    }
}
