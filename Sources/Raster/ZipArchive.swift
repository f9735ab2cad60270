import Foundation

/// Zip archives of files that are already compressed (dalles, JPEG, PNG), made as a stream:
/// entries are stored, not deflated; each entry's CRC-32 and size follow its data in a data
/// descriptor (general purpose flag bit 3), so an archive is sent while it is made and nothing is
/// kept on disk. ZIP64 fields are written only where a size, an offset or the entry count needs them.
public struct ZipArchive: Sendable {
    /// One file to put in an archive: its name there, and its bytes: a path on disk, or a reader
    /// of a file elsewhere (an object in a bucket) whose size and date are known.
    public struct Entry: Sendable {
        public var name: String
        public var content: Content

        /// Where an entry's bytes come from.
        public enum Content: Sendable {
            /// A local file, read with `pread`.
            case file(path: String)
            /// `size` bytes dated `modified`, read by `read(offset, count)`, which answers at most
            /// `count` bytes (none at the end).
            case reader(size: UInt64, modified: Date, read: @Sendable (UInt64, Int) async throws -> [UInt8])
        }

        /// A local file.
        public init(name: String, path: String) {
            self.name = name
            content = .file(path: path)
        }

        /// A file read through `read`.
        public init(
            name: String, size: UInt64, modified: Date, read: @escaping @Sendable (UInt64, Int) async throws -> [UInt8]
        ) {
            self.name = name
            content = .reader(size: size, modified: modified, read: read)
        }
    }

    /// Sizes and offsets at or past this need ZIP64 fields.
    static let max32: UInt64 = 0xFFFF_FFFF
    /// Entries read this many bytes at a time.
    public static let chunkSize = 1 << 20

    private struct Written {
        var name: [UInt8]
        var time: UInt16
        var date: UInt16
        var offset: UInt64
        var crc: UInt32
        var size: UInt64
    }

    private var entries: [Written] = []
    private var pending: (entry: Written, zip64: Bool)?
    /// Bytes of the archive produced so far.
    public private(set) var offset: UInt64 = 0

    /// An empty archive.
    public init() {}

    /// The local header of the next entry. `expectedSize` is the most its data may weigh: at
    /// 4 GiB or more the entry carries ZIP64 sizes.
    public mutating func begin(name: String, modified: Date, expectedSize: UInt64) -> [UInt8] {
        let (time, date) = Self.dosDateTime(modified)
        let nameBytes = Array(name.utf8)
        let zip64 = expectedSize >= Self.max32
        var h = ByteWriter()
        h.u32(0x0403_4B50)
        h.u16(zip64 ? 45 : 20)
        h.u16(Self.flags)
        h.u16(0)  // stored
        h.u16(time)
        h.u16(date)
        h.u32(0)  // CRC-32: in the data descriptor
        h.u32(zip64 ? UInt32.max : 0)
        h.u32(zip64 ? UInt32.max : 0)
        h.u16(UInt16(clamping: nameBytes.count))
        h.u16(zip64 ? 20 : 0)
        h.bytes(nameBytes.prefix(Int(UInt16.max)))
        if zip64 {
            h.u16(1)
            h.u16(16)
            h.u64(0)
            h.u64(0)
        }
        pending = (Written(name: nameBytes, time: time, date: date, offset: offset, crc: 0, size: 0), zip64)
        offset += UInt64(h.out.count)
        return h.out
    }

    /// The data descriptor closing the entry begun last, once its `size` bytes of data were sent.
    public mutating func end(crc: UInt32, size: UInt64) -> [UInt8] {
        guard var (entry, zip64) = pending else { return [] }
        pending = nil
        offset += size
        entry.crc = crc
        entry.size = size
        entries.append(entry)
        var d = ByteWriter()
        d.u32(0x0807_4B50)
        d.u32(crc)
        if zip64 {
            d.u64(size)
            d.u64(size)
        } else {
            d.u32(UInt32(truncatingIfNeeded: size))
            d.u32(UInt32(truncatingIfNeeded: size))
        }
        offset += UInt64(d.out.count)
        return d.out
    }

    /// The central directory and the end records (ZIP64 ones when needed).
    public mutating func finish() -> [UInt8] {
        var c = ByteWriter()
        let start = offset
        for e in entries {
            let bigSize = e.size >= Self.max32
            let bigOffset = e.offset >= Self.max32
            var extra = ByteWriter()
            if bigSize || bigOffset {
                extra.u16(1)
                extra.u16(UInt16((bigSize ? 16 : 0) + (bigOffset ? 8 : 0)))
                if bigSize {
                    extra.u64(e.size)
                    extra.u64(e.size)
                }
                if bigOffset { extra.u64(e.offset) }
            }
            let needed: UInt16 = bigSize || bigOffset ? 45 : 20
            c.u32(0x0201_4B50)
            c.u16(3 << 8 | 45)  // made by: Unix, zip 4.5
            c.u16(needed)
            c.u16(Self.flags)
            c.u16(0)
            c.u16(e.time)
            c.u16(e.date)
            c.u32(e.crc)
            c.u32(bigSize ? UInt32.max : UInt32(e.size))
            c.u32(bigSize ? UInt32.max : UInt32(e.size))
            c.u16(UInt16(clamping: e.name.count))
            c.u16(UInt16(extra.out.count))
            c.u16(0)  // comment
            c.u16(0)  // disk
            c.u16(0)  // internal attributes
            c.u32(0o100644 << 16)  // a regular file, rw-r--r--
            c.u32(bigOffset ? UInt32.max : UInt32(e.offset))
            c.bytes(e.name.prefix(Int(UInt16.max)))
            c.bytes(extra.out)
        }
        let size = UInt64(c.out.count)
        if entries.count >= 0xFFFF || size >= Self.max32 || start >= Self.max32 {
            let record = start + size
            c.u32(0x0606_4B50)
            c.u64(44)
            c.u16(3 << 8 | 45)
            c.u16(45)
            c.u32(0)
            c.u32(0)
            c.u64(UInt64(entries.count))
            c.u64(UInt64(entries.count))
            c.u64(size)
            c.u64(start)
            c.u32(0x0706_4B50)
            c.u32(0)
            c.u64(record)
            c.u32(1)
        }
        c.u32(0x0605_4B50)
        c.u16(0)
        c.u16(0)
        c.u16(UInt16(clamping: entries.count))
        c.u16(UInt16(clamping: entries.count))
        c.u32(UInt32(clamping: size))
        c.u32(UInt32(clamping: start))
        c.u16(0)
        offset += UInt64(c.out.count)
        return c.out
    }

    /// Data descriptor follows the data (bit 3); names are UTF-8 (bit 11).
    static let flags: UInt16 = 0x0008 | 0x0800

    /// MS-DOS time and date of `date` in local time (what zip tools show); clamped to 1980…2107.
    public static func dosDateTime(_ date: Date) -> (time: UInt16, date: UInt16) {
        let c = Calendar.current.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        guard let year = c.year, year >= 1980 else { return (0, 1 << 5 | 1) }
        guard year <= 2107 else { return (23 << 11 | 59 << 5 | 29, 127 << 9 | 12 << 5 | 31) }
        let time = (c.hour ?? 0) << 11 | (c.minute ?? 0) << 5 | (c.second ?? 0) / 2
        let day = (year - 1980) << 9 | (c.month ?? 1) << 5 | (c.day ?? 1)
        return (UInt16(time), UInt16(day))
    }

    /// Makes an archive of `files`, handing its bytes to `emit` in order, a chunk at a time.
    /// Each file's modification time dates its entry; a file read short (it shrank meanwhile)
    /// ends its entry there, and one that grew is cut at the size it had when it was opened.
    public static func stream(
        _ files: [Entry], emit: (_ bytes: UnsafeRawBufferPointer) async throws -> Void
    ) async throws {
        var zip = ZipArchive()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
        defer { buffer.deallocate() }
        // Records go through the buffer too: an array cannot lend its bytes across a suspension.
        func send(_ bytes: [UInt8]) async throws {
            var start = 0
            while start < bytes.count {
                let n = min(chunkSize, bytes.count - start)
                bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + start, byteCount: n) }
                try await emit(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                start += n
            }
        }
        for f in files {
            switch f.content {
            case .file(let path):
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw RasterError("cannot read \(f.name) (errno \(errno))") }
                defer { close(fd) }
                var st = stat()
                guard fstat(fd, &st) == 0 else { throw RasterError("cannot read \(f.name) (errno \(errno))") }
                let size = UInt64(max(0, st.st_size))
                let modified = Date(
                    timeIntervalSince1970: Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9)
                try await send(zip.begin(name: f.name, modified: modified, expectedSize: size))
                var crc: UInt32 = 0
                var sent: UInt64 = 0
                while sent < size {
                    let want = Int(min(UInt64(chunkSize), size - sent))
                    let n = pread(fd, buffer.baseAddress, want, off_t(sent))
                    if n < 0, errno == EINTR { continue }
                    guard n >= 0 else { throw RasterError("cannot read \(f.name) (errno \(errno))") }
                    if n == 0 { break }
                    let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
                    crc = Deflate.crc32(chunk, previous: crc)
                    try await emit(chunk)
                    sent += UInt64(n)
                }
                try await send(zip.end(crc: crc, size: sent))
            case .reader(let size, let modified, let read):
                try await send(zip.begin(name: f.name, modified: modified, expectedSize: size))
                var crc: UInt32 = 0
                var sent: UInt64 = 0
                while sent < size {
                    let want = Int(min(UInt64(chunkSize), size - sent))
                    let bytes = try await read(sent, want)
                    if bytes.isEmpty { break }
                    let n = min(bytes.count, want)
                    crc = bytes.withUnsafeBytes {
                        Deflate.crc32(UnsafeRawBufferPointer(rebasing: $0[0..<n]), previous: crc)
                    }
                    try await send(n == bytes.count ? bytes : Array(bytes.prefix(n)))
                    sent += UInt64(n)
                }
                try await send(zip.end(crc: crc, size: sent))
            }
        }
        try await send(zip.finish())
    }

    /// Writes `files` (name in the archive, path on disk) into a new zip at `path`.
    public static func write(_ path: String, files: [(name: String, path: String)]) throws {
        guard let out = FileHandle(forWritingAtPath: path) ?? Self.create(path) else {
            throw RasterError("cannot create \(path)")
        }
        defer { try? out.close() }
        try out.truncate(atOffset: 0)
        // The files are local and small (an image, its world file, its .prj): read whole.
        var zip = ZipArchive()
        for f in files {
            let data = try Data(contentsOf: URL(fileURLWithPath: f.path))
            let modified =
                (try? FileManager.default.attributesOfItem(atPath: f.path)[.modificationDate] as? Date) ?? Date()
            try out.write(contentsOf: zip.begin(name: f.name, modified: modified, expectedSize: UInt64(data.count)))
            try out.write(contentsOf: data)
            let crc = data.withUnsafeBytes { Deflate.crc32($0) }
            try out.write(contentsOf: zip.end(crc: crc, size: UInt64(data.count)))
        }
        try out.write(contentsOf: zip.finish())
    }

    private static func create(_ path: String) -> FileHandle? {
        guard FileManager.default.createFile(atPath: path, contents: nil) else { return nil }
        return FileHandle(forWritingAtPath: path)
    }
}

/// Little-endian fields of zip records.
private struct ByteWriter {
    var out: [UInt8] = []
    mutating func u16(_ v: UInt16) { out += [UInt8(v & 0xFF), UInt8(v >> 8)] }
    mutating func u32(_ v: UInt32) { for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    mutating func u64(_ v: UInt64) { for i in 0..<8 { out.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
    mutating func bytes(_ b: some Sequence<UInt8>) { out.append(contentsOf: b) }
}
