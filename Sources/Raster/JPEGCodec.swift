import CTurboJPEG
import Foundation

/// A libjpeg-turbo compressor/decompressor pair. Not thread-safe: one per task, reused for
/// every tile the task encodes so no handle or output buffer is allocated per tile.
public final class JPEGCodec {
    private let compressor: tjhandle
    private let decompressor: tjhandle
    private var output: UnsafeMutablePointer<UInt8>
    private var outputCapacity: Int

    public init() throws {
        guard let c = tjInitCompress(), let d = tjInitDecompress() else {
            throw RasterError("cannot initialise libjpeg-turbo")
        }
        compressor = c
        decompressor = d
        outputCapacity = Int(tjBufSize(512, 512, Int32(TJSAMP_444.rawValue)))
        output = tjAlloc(Int32(outputCapacity))
    }

    deinit {
        tjDestroy(compressor)
        tjDestroy(decompressor)
        tjFree(output)
    }

    /// Encodes `width`×`height` RGBX pixels (4 bytes each, the 4th ignored) starting at `pixels`
    /// with `stride` bytes per row into a complete baseline JPEG stream (own tables, YCbCr 4:2:0).
    /// The bytes are valid until the next call: `body` gets them without a copy.
    public func encode<R>(
        rgbx pixels: UnsafePointer<UInt8>, width: Int, height: Int, stride: Int, quality: Int,
        _ body: (UnsafeRawBufferPointer) throws -> R
    ) throws -> R {
        let need = Int(tjBufSize(Int32(width), Int32(height), Int32(TJSAMP_420.rawValue)))
        if need > outputCapacity {
            tjFree(output)
            output = tjAlloc(Int32(need))
            outputCapacity = need
        }
        var buf: UnsafeMutablePointer<UInt8>? = output
        var size: UInt = UInt(outputCapacity)
        let rc = tjCompress2(
            compressor, pixels, Int32(width), Int32(stride), Int32(height), Int32(TJPF_RGBX.rawValue), &buf, &size,
            Int32(TJSAMP_420.rawValue), Int32(quality), Int32(TJFLAG_NOREALLOC))
        guard rc == 0 else { throw RasterError("JPEG encoding failed: \(String(cString: tjGetErrorStr2(compressor)))") }
        return try body(UnsafeRawBufferPointer(start: output, count: Int(size)))
    }

    /// The width and height a JPEG stream declares.
    public func dimensions(of jpeg: UnsafeRawBufferPointer) throws -> (width: Int, height: Int) {
        var w: Int32 = 0
        var h: Int32 = 0
        var sub: Int32 = 0
        var cs: Int32 = 0
        let rc = tjDecompressHeader3(
            decompressor, jpeg.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt(jpeg.count), &w, &h, &sub, &cs)
        guard rc == 0 else { throw RasterError("not a JPEG stream: \(String(cString: tjGetErrorStr2(decompressor)))") }
        return (Int(w), Int(h))
    }

    /// Decodes a JPEG stream into RGBX pixels (alpha byte set to 255) at `pixels` with `stride`.
    public func decode(
        _ jpeg: UnsafeRawBufferPointer, into pixels: UnsafeMutablePointer<UInt8>, width: Int, height: Int, stride: Int
    ) throws {
        let rc = tjDecompress2(
            decompressor, jpeg.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt(jpeg.count), pixels,
            Int32(width), Int32(stride), Int32(height), Int32(TJPF_RGBA.rawValue), 0)
        guard rc == 0 else {
            throw RasterError("JPEG decoding failed: \(String(cString: tjGetErrorStr2(decompressor)))")
        }
    }
}
