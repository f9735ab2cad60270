import Foundation
import NIOCore

/// A local file that cannot be read, and why.
public struct LocalFileError: Error, Sendable, CustomStringConvertible {
    /// The file.
    public var path: String
    /// What failed (the system's message).
    public var reason: String

    /// `path: reason`.
    public var description: String { "\(path): \(reason)" }
}

/// A file open for reading; closes at `deinit`. Read with `pread`, so reads need no seeking and
/// land straight in the buffer that is sent.
final class LocalFile {
    let path: String
    private let descriptor: Int32

    init(readingAt path: String) throws(LocalFileError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw LocalFileError(path: path, reason: String(cString: strerror(errno))) }
        self.path = path
        self.descriptor = fd
    }

    deinit { close(descriptor) }

    /// The file's size in bytes.
    func size() throws(LocalFileError) -> Int {
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            throw LocalFileError(path: path, reason: String(cString: strerror(errno)))
        }
        return Int(info.st_size)
    }

    /// Exactly `count` bytes from `offset`; a file shorter than that is an error.
    func read(at offset: Int, count: Int) throws(LocalFileError) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        var failure: String?
        while buffer.readableBytes < count && failure == nil {
            let done = buffer.readableBytes
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count - done) { target in
                let n = pread(descriptor, target.baseAddress, count - done, off_t(offset + done))
                if n < 0 {
                    if errno == EINTR { return 0 }
                    failure = String(cString: strerror(errno))
                    return 0
                }
                if n == 0 { failure = "ends before byte \(offset + count)" }
                return n
            }
        }
        if let failure { throw LocalFileError(path: path, reason: failure) }
        return buffer
    }
}
