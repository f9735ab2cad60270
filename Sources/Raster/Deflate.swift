import CZlib
import Foundation

/// zlib: DEFLATE for TIFF masks and CRC-32 checksums of shards.
public enum Deflate {
    /// zlib-wrapped DEFLATE (TIFF compression 8, "Adobe deflate").
    public static func compress(_ bytes: UnsafeRawBufferPointer, level: Int32 = 6) throws -> [UInt8] {
        var capacity = compressBound(uLong(bytes.count))
        var out = [UInt8](repeating: 0, count: Int(capacity))
        let rc = out.withUnsafeMutableBufferPointer { o in
            compress2(
                o.baseAddress, &capacity, bytes.baseAddress?.assumingMemoryBound(to: Bytef.self), uLong(bytes.count),
                level)
        }
        guard rc == Z_OK else { throw RasterError("deflate failed (\(rc))") }
        out.removeSubrange(Int(capacity)...)
        return out
    }

    /// Inflates zlib-wrapped data into exactly `count` bytes at `output`.
    public static func decompress(_ bytes: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws {
        var size = uLong(output.count)
        let rc = uncompress(
            output.baseAddress?.assumingMemoryBound(to: Bytef.self), &size,
            bytes.baseAddress?.assumingMemoryBound(to: Bytef.self), uLong(bytes.count))
        guard rc == Z_OK, Int(size) == output.count else { throw RasterError("corrupt DEFLATE data (\(rc))") }
    }

    /// CRC-32 (zlib's), continuing from `previous`.
    public static func crc32(_ bytes: UnsafeRawBufferPointer, previous: UInt32 = 0) -> UInt32 {
        UInt32(
            CZlib.crc32(uLong(previous), bytes.baseAddress?.assumingMemoryBound(to: Bytef.self), uInt(bytes.count)))
    }

    /// The CRC-32 of two byte runs one after the other, from the CRC of each and the second's length.
    public static func crc32Combine(_ first: UInt32, _ second: UInt32, secondLength: Int) -> UInt32 {
        UInt32(CZlib.crc32_combine(uLong(first), uLong(second), Int(secondLength)))
    }
}

extension Deflate {
    /// gzip (RFC 1952) of a whole document, for HTTP `Content-Encoding: gzip`.
    public static func gzip(_ bytes: UnsafeRawBufferPointer, level: Int32 = 6) throws -> [UInt8] {
        var stream = z_stream()
        guard
            deflateInit2_(
                &stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY, ZLIB_VERSION,
                Int32(MemoryLayout<z_stream>.size)) == Z_OK
        else { throw RasterError("gzip initialisation failed") }
        defer { deflateEnd(&stream) }
        var out = [UInt8](repeating: 0, count: Int(deflateBound(&stream, uLong(bytes.count))) + 32)
        let rc = out.withUnsafeMutableBufferPointer { o -> Int32 in
            stream.next_in = UnsafeMutablePointer(mutating: bytes.baseAddress?.assumingMemoryBound(to: Bytef.self))
            stream.avail_in = uInt(bytes.count)
            stream.next_out = o.baseAddress
            stream.avail_out = uInt(o.count)
            return deflate(&stream, Z_FINISH)
        }
        guard rc == Z_STREAM_END else { throw RasterError("gzip failed (\(rc))") }
        out.removeSubrange(Int(stream.total_out)...)
        return out
    }
}
