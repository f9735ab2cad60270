import Foundation
import Raster

/// A shard that cannot be read: truncated, not a TIFF, or not laid out as a pyramid shard.
public struct ShardError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var reason: String
    /// Set when the same failure was already reported once.
    public var repeated = false
    /// The process is out of file descriptors: nothing is wrong with the shard, try again later.
    public var transient = false
    public var description: String { "\(path): \(reason)" }

    public init(path: String, reason: String, transient: Bool = false) {
        self.path = path
        self.reason = reason
        self.transient = transient
    }
}

/// A read-only COG shard. Headers are parsed once at open; a tile is then one `pread` of its byte
/// range from the descriptor kept open: no lock, safe to share between tasks. Nothing is mapped,
/// so a file truncated or rewritten under a running server gives a short read — an error for the
/// tiles it lost — never a SIGBUS.
public final class ShardReader: @unchecked Sendable {
    /// One image (or mask) directory.
    public struct Image: Sendable {
        public var width: Int
        public var height: Int
        public var tileWidth: Int
        public var tileHeight: Int
        public var compression: Int
        public var isMask: Bool
        public var offsets: [UInt64]
        public var byteCounts: [UInt64]
        public var tilesAcross: Int { (width + tileWidth - 1) / tileWidth }

        /// Where tile (`col`, `row`) lies in a file of `fileSize` bytes; nil when the tile is
        /// absent. A range past the end throws (a truncated or replaced file).
        public func range(col: Int, row: Int, fileSize: Int, path: String) throws -> (offset: UInt64, count: Int)? {
            let across = tilesAcross
            guard col >= 0, row >= 0, col < across, row < (height + tileHeight - 1) / tileHeight else {
                return nil
            }
            let i = row * across + col
            guard i < offsets.count, i < byteCounts.count else { return nil }
            let offset = offsets[i]
            let count = byteCounts[i]
            if offset == 0 || count == 0 { return nil }
            guard count <= UInt64(fileSize), offset <= UInt64(fileSize) - count else {
                throw ShardError(path: path, reason: "tile \(col),\(row) lies past the end of the file (truncated?)")
            }
            return (offset, Int(count))
        }
    }

    public let path: String
    /// The file's size when it was opened.
    public let fileSize: Int
    /// Image directories, full resolution first.
    public let images: [Image]
    /// Mask directories matching `images` one to one, or empty when the shard has no mask.
    public let masks: [Image]
    public let isBigTIFF: Bool
    /// The file opened, as device and inode: a shard replaced on disk (renamed over) is another file.
    public let fileID: FileID
    private let fd: Int32

    /// A file's identity and state, to tell when a shard on disk changed.
    public struct FileID: Sendable, Hashable {
        public var device: UInt64
        public var inode: UInt64
        public var size: Int
        public var modified: Int

        init(_ st: stat) {
            device = UInt64(st.st_dev)
            inode = UInt64(st.st_ino)
            size = Int(st.st_size)
            modified = st.st_mtim.tv_sec &* 1_000_000_000 &+ st.st_mtim.tv_nsec
        }

        /// The file at `path` now; nil when it is gone.
        public static func of(path: String) -> FileID? {
            var st = stat()
            return stat(path, &st) == 0 ? FileID(st) : nil
        }
    }

    /// Headers larger than this are not a shard's (a full band's directories take about 300 kB).
    static let maxHeaderBytes = 64 << 20

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw ShardError(
                path: path, reason: String(cString: strerror(code)), transient: code == EMFILE || code == ENFILE)
        }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= 16 else {
            close(fd)
            throw ShardError(path: path, reason: "too short for a TIFF")
        }
        self.fd = fd
        fileSize = Int(st.st_size)
        fileID = FileID(st)
        do {
            var header = try HeaderBytes(fd: fd, fileSize: fileSize, path: path)
            (images, masks, isBigTIFF) = try Self.parse(&header, path: path)
        } catch {
            close(fd)
            throw error
        }
    }

    deinit { close(fd) }

    /// The whole file as it is now (for checksums).
    public func readAll() throws -> [UInt8] {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw ShardError(path: path, reason: String(cString: strerror(errno))) }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        try out.withUnsafeMutableBytes { try read(at: 0, into: $0) }
        return out
    }

    /// Fills `buffer` with the file's bytes from `offset`; a short read (the file shrank) throws.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n > 0 {
                done += n
            } else if n < 0, errno == EINTR {
                continue
            } else {
                let why =
                    n == 0
                    ? "the file ends before byte \(offset + UInt64(buffer.count)) (truncated?)"
                    : String(cString: strerror(errno))
                throw ShardError(path: path, reason: why)
            }
        }
    }

    /// Where a tile's bytes lie in the file; nil when the tile is absent. `overview` 0 is full
    /// resolution.
    public func tileRange(overview: Int, col: Int, row: Int) throws -> (offset: UInt64, count: Int)? {
        guard images.indices.contains(overview) else { return nil }
        return try range(images[overview], col: col, row: row)
    }

    /// The stored bytes of one tile (a complete JPEG or WebP stream), nil when the tile is absent.
    public func tile(overview: Int, col: Int, row: Int) throws -> [UInt8]? {
        guard let r = try tileRange(overview: overview, col: col, row: row) else { return nil }
        return try bytes(r)
    }

    /// The DEFLATE-compressed 1-bit mask of one tile; nil when the shard has no mask or the tile is absent.
    public func maskTile(overview: Int, col: Int, row: Int) throws -> [UInt8]? {
        guard let r = try maskRange(overview: overview, col: col, row: row) else { return nil }
        return try bytes(r)
    }

    /// Where a tile's mask lies in the file; nil when the shard has no mask or the tile is absent.
    public func maskRange(overview: Int, col: Int, row: Int) throws -> (offset: UInt64, count: Int)? {
        guard masks.indices.contains(overview) else { return nil }
        return try range(masks[overview], col: col, row: row)
    }

    private func bytes(_ r: (offset: UInt64, count: Int)) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: r.count)
        try out.withUnsafeMutableBytes { try read(at: r.offset, into: $0) }
        return out
    }

    private func range(_ image: Image, col: Int, row: Int) throws -> (offset: UInt64, count: Int)? {
        try image.range(col: col, row: row, fileSize: fileSize, path: path)
    }

    /// The start of the file, read as far as parsing needs (COG headers come first): from a file
    /// descriptor, or from bytes already fetched (an object store's ranged read).
    struct HeaderBytes {
        let fd: Int32?
        let fileSize: Int
        let path: String
        var bytes: [UInt8] = []

        init(fd: Int32, fileSize: Int, path: String) throws {
            self.fd = fd
            self.fileSize = fileSize
            self.path = path
            try need(min(fileSize, 64 << 10))
        }

        /// The first `bytes.count` bytes of a file of `fileSize` bytes, fetched beforehand: asking
        /// for more throws ``MoreHeaderNeeded``.
        init(bytes: [UInt8], fileSize: Int, path: String) {
            fd = nil
            self.fileSize = fileSize
            self.path = path
            self.bytes = bytes
        }

        /// Makes sure the first `count` bytes are in `bytes`.
        mutating func need(_ count: Int) throws {
            guard count > bytes.count else { return }
            guard count <= fileSize, count <= ShardReader.maxHeaderBytes else {
                throw ShardError(path: path, reason: "truncated header")
            }
            let target = min(fileSize, max(count, bytes.count * 2))
            guard let fd else { throw MoreHeaderNeeded(count: target) }
            let old = bytes.count
            bytes += [UInt8](repeating: 0, count: target - old)
            var done = old
            while done < target {
                let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, target - done, off_t(done)) }
                if n > 0 {
                    done += n
                } else if n < 0, errno == EINTR {
                    continue
                } else {
                    throw ShardError(path: path, reason: "truncated header")
                }
            }
        }

        mutating func u16(_ o: Int) throws -> Int {
            try need(o + 2)
            return Int(bytes[o]) | Int(bytes[o + 1]) << 8
        }

        mutating func u32(_ o: Int) throws -> Int {
            try need(o + 4)
            return (0..<4).reduce(0) { $0 | Int(bytes[o + $1]) << (8 * $1) }
        }

        mutating func u64(_ o: Int) throws -> UInt64 {
            try need(o + 8)
            return (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[o + $1]) << (8 * UInt64($1)) }
        }
    }

    // MARK: - Parsing

    /// The image and mask directories of a shard whose first bytes `h` holds.
    static func parse(_ h: inout HeaderBytes, path: String) throws -> ([Image], [Image], Bool) {
        func fail(_ why: String) -> ShardError { ShardError(path: path, reason: why) }
        let size = h.fileSize
        func u16(_ o: Int) throws -> Int { try h.u16(o) }
        func u32(_ o: Int) throws -> Int { try h.u32(o) }
        func u64(_ o: Int) throws -> UInt64 { try h.u64(o) }
        // An offset or count read from the file, as an Int that cannot trap later (a corrupt
        // file may hold any 64-bit value).
        func offset64(_ o: Int) throws -> Int {
            let v = try u64(o)
            guard v <= UInt64(size) else { throw fail("an offset lies past the end") }
            return Int(v)
        }
        guard try u16(0) == 0x4949 else { throw fail("not a little-endian TIFF") }
        let magic = try u16(2)
        guard magic == 42 || magic == 43 else { throw fail("not a TIFF") }
        let big = magic == 43
        var ifd = big ? try offset64(8) : try u32(4)
        var images: [Image] = []
        var masks: [Image] = []
        var seen = Set<Int>()
        while ifd != 0 {
            guard ifd < size, seen.insert(ifd).inserted, seen.count < 64 else { throw fail("bad IFD chain") }
            let n = big ? try offset64(ifd) : try u16(ifd)
            let entrySize = big ? 20 : 12
            var first = ifd + (big ? 8 : 2)
            var fields: [Int: [UInt64]] = [:]
            for _ in 0..<n {
                let tag = try u16(first)
                let type = try u16(first + 2)
                let count = big ? try offset64(first + 4) : try u32(first + 4)
                let width: Int
                switch type {
                case 3: width = 2
                case 4: width = 4
                case 16: width = 8
                default: width = 0
                }
                if width > 0, [254, 256, 257, 259, 322, 323, 324, 325].contains(tag) {
                    let inlineSize = big ? 8 : 4
                    let valueAt = first + (big ? 12 : 8)
                    let dataAt =
                        count * width <= inlineSize ? valueAt : (big ? try offset64(valueAt) : try u32(valueAt))
                    guard count >= 0, dataAt + count * width <= size else { throw fail("tag \(tag) lies past the end") }
                    var values = [UInt64](repeating: 0, count: count)
                    for k in 0..<count {
                        let o = dataAt + k * width
                        values[k] = width == 2 ? UInt64(try u16(o)) : width == 4 ? UInt64(try u32(o)) : try u64(o)
                    }
                    fields[tag] = values
                }
                first += entrySize
            }
            let next = big ? try offset64(first) : try u32(first)
            guard let w = fields[256]?.first, let height = fields[257]?.first, let tw = fields[322]?.first,
                let th = fields[323]?.first, let offsets = fields[324], let counts = fields[325], tw > 0, th > 0,
                w <= 1 << 24, height <= 1 << 24, tw <= 1 << 16, th <= 1 << 16
            else { throw fail("a directory is not tiled") }
            let subfile = fields[254]?.first ?? 0
            let image = Image(
                width: Int(w), height: Int(height), tileWidth: Int(tw), tileHeight: Int(th),
                compression: Int(truncatingIfNeeded: fields[259]?.first ?? 1), isMask: subfile & 4 != 0,
                offsets: offsets,
                byteCounts: counts)
            if image.isMask { masks.append(image) } else { images.append(image) }
            ifd = next
        }
        guard !images.isEmpty else { throw fail("no image") }
        guard masks.isEmpty || masks.count == images.count else { throw fail("masks do not match the images") }
        return (images, masks, big)
    }
}

/// Parsing a header held in memory reached past its end: the first `count` bytes are needed.
struct MoreHeaderNeeded: Error {
    var count: Int
}
