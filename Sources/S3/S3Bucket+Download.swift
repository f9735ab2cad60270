import Foundation
import NIOCore

extension S3Bucket {
    /// Ranged GETs of 16 MiB: few requests per shard, and a failed piece costs little to fetch again.
    public static let defaultDownloadChunk = 16 << 20

    /// Copies an object, or its first `limit` bytes, into the local file `path` (created or
    /// truncated), one ranged GET of `chunkSize` bytes after the other: memory stays at one chunk
    /// whatever the object's size. Every chunk must come from one version of the object (one
    /// ETag), else `invalidResponse`. Returns the object's whole size and its ETag. Throws
    /// `S3Error`, or `LocalFileError` when the file cannot be written.
    @discardableResult
    public func download(_ key: String, to path: String, limit: Int? = nil, chunkSize: Int = Self.defaultDownloadChunk)
        async throws -> (size: Int, etag: String)
    {
        precondition(chunkSize > 0 && (limit ?? 1) > 0, "a download asks for at least one byte")
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw LocalFileError(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var offset = 0
        var total: Int?
        var etag: String?
        while offset < min(total ?? Int.max, limit ?? Int.max) {
            let end = min(offset + chunkSize, limit ?? Int.max, total ?? Int.max)
            let piece: S3Object
            do {
                piece = try await get(key, range: offset..<end)
            } catch {
                // An empty object has no byte 0 to range over.
                guard error.code == "InvalidRange", offset == 0 else { throw error }
                return (0, try await head(key).etag)
            }
            if let etag, etag != piece.etag {
                throw S3Error(
                    kind: .invalidResponse, operation: "GET", resource: "s3://\(name)/\(key)",
                    message: "the object changed while it was read (ETag \(etag), then \(piece.etag))")
            }
            etag = piece.etag
            total = piece.totalSize
            guard piece.bytes.readableBytes > 0 || offset >= piece.totalSize else {
                throw S3Error(
                    kind: .invalidResponse, operation: "GET", resource: "s3://\(name)/\(key)",
                    message: "an empty answer for bytes \(offset)-\(end - 1) of \(piece.totalSize)")
            }
            let failure = piece.bytes.withUnsafeReadableBytes { bytes -> String? in
                var done = 0
                while done < bytes.count {
                    let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
                    if n < 0 {
                        if errno == EINTR { continue }
                        return String(cString: strerror(errno))
                    }
                    done += n
                }
                return nil
            }
            if let failure { throw LocalFileError(path: path, reason: failure) }
            offset += piece.bytes.readableBytes
            if piece.bytes.readableBytes == 0 { break }
        }
        return (total ?? 0, etag ?? "")
    }
}

/// One version of an object, read a range at a time: the size and ETag a HEAD gave, then ranged
/// GETs that must all come from that version (a replaced object fails the read, never mixes two
/// versions). What streams an object to a client holds one range in memory, whatever its size.
public struct S3ObjectReader: Sendable {
    /// The bucket and key read.
    public let bucket: S3Bucket
    public let key: String
    /// What the HEAD said: size, ETag, date.
    public let info: S3ObjectInfo

    /// Asks the object's size and ETag (one HEAD); `notFound` when there is none.
    public init(bucket: S3Bucket, key: String) async throws(S3Error) {
        self.bucket = bucket
        self.key = key
        info = try await bucket.head(key)
    }

    /// The object's size in bytes.
    public var size: Int { info.size }

    /// When the object was written, from `Last-Modified` (an HTTP date); nil when absent or unreadable.
    public var modified: Date? {
        guard let text = info.lastModified else { return nil }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return f.date(from: text)
    }

    /// Up to `count` bytes from `offset` (fewer where the object ends; none past it).
    public func read(at offset: Int, count: Int) async throws(S3Error) -> ByteBuffer {
        guard count > 0, offset < info.size else { return ByteBuffer() }
        let piece = try await bucket.get(key, range: offset..<min(info.size, offset + count))
        guard piece.etag == info.etag else {
            throw S3Error(
                kind: .invalidResponse, operation: "GET", resource: "s3://\(bucket.name)/\(key)",
                message: "the object changed while it was read (ETag \(info.etag), then \(piece.etag))")
        }
        return piece.bytes
    }
}
