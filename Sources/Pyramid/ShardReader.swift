import Foundation
import Raster

/// A shard that cannot be read: truncated, not a TIFF, or not laid out as a pyramid shard.
public struct ShardError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var reason: String
    /// Set when the same failure was already reported once.
    public var repeated = false
    public var description: String { "\(path): \(reason)" }
}

/// A read-only, memory-mapped COG shard. Headers are parsed once at open; a tile is then a
/// slice of the mapping: no read, no copy, no lock. Safe to share between tasks.
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
    }

    public let path: String
    public let fileSize: Int
    /// Image directories, full resolution first.
    public let images: [Image]
    /// Mask directories matching `images` one to one, or empty when the shard has no mask.
    public let masks: [Image]
    public let isBigTIFF: Bool
    private let base: UnsafeRawPointer

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ShardError(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_size >= 16 else {
            throw ShardError(path: path, reason: "too short for a TIFF")
        }
        fileSize = Int(st.st_size)
        guard let map = mmap(nil, fileSize, PROT_READ, MAP_SHARED, fd, 0), map != MAP_FAILED else {
            throw ShardError(path: path, reason: "cannot map: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(map)
        do {
            (images, masks, isBigTIFF) = try Self.parse(base, size: fileSize, path: path)
        } catch {
            munmap(map, fileSize)
            throw error
        }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), fileSize) }

    /// The bytes of the whole file (for checksums).
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: fileSize) }

    /// The stored bytes of one tile, nil when the tile is absent. `overview` 0 is full resolution.
    public func tile(overview: Int, col: Int, row: Int) throws -> UnsafeRawBufferPointer? {
        guard images.indices.contains(overview) else { return nil }
        return try slice(images[overview], col: col, row: row)
    }

    /// The DEFLATE-compressed 1-bit mask of one tile; nil when the shard has no mask or the tile is absent.
    public func maskTile(overview: Int, col: Int, row: Int) throws -> UnsafeRawBufferPointer? {
        guard masks.indices.contains(overview) else { return nil }
        return try slice(masks[overview], col: col, row: row)
    }

    private func slice(_ image: Image, col: Int, row: Int) throws -> UnsafeRawBufferPointer? {
        let across = image.tilesAcross
        guard col >= 0, row >= 0, col < across, row < (image.height + image.tileHeight - 1) / image.tileHeight else {
            return nil
        }
        let i = row * across + col
        guard i < image.offsets.count, i < image.byteCounts.count else { return nil }
        let offset = image.offsets[i]
        let count = image.byteCounts[i]
        if offset == 0 || count == 0 { return nil }
        guard offset + count <= UInt64(fileSize) else {
            throw ShardError(path: path, reason: "tile \(col),\(row) lies past the end of the file (truncated?)")
        }
        return UnsafeRawBufferPointer(start: base + Int(offset), count: Int(count))
    }

    // MARK: - Parsing

    private static func parse(_ p: UnsafeRawPointer, size: Int, path: String) throws -> ([Image], [Image], Bool) {
        func fail(_ why: String) -> ShardError { ShardError(path: path, reason: why) }
        func u16(_ o: Int) throws -> Int {
            guard o + 2 <= size else { throw fail("truncated header") }
            return Int(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt16.self)))
        }
        func u32(_ o: Int) throws -> Int {
            guard o + 4 <= size else { throw fail("truncated header") }
            return Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt32.self)))
        }
        func u64(_ o: Int) throws -> UInt64 {
            guard o + 8 <= size else { throw fail("truncated header") }
            return UInt64(littleEndian: p.loadUnaligned(fromByteOffset: o, as: UInt64.self))
        }
        guard try u16(0) == 0x4949 else { throw fail("not a little-endian TIFF") }
        let magic = try u16(2)
        guard magic == 42 || magic == 43 else { throw fail("not a TIFF") }
        let big = magic == 43
        var ifd = big ? Int(try u64(8)) : try u32(4)
        var images: [Image] = []
        var masks: [Image] = []
        var seen = Set<Int>()
        while ifd != 0 {
            guard ifd < size, seen.insert(ifd).inserted, seen.count < 64 else { throw fail("bad IFD chain") }
            let n = big ? Int(try u64(ifd)) : try u16(ifd)
            let entrySize = big ? 20 : 12
            var first = ifd + (big ? 8 : 2)
            var fields: [Int: [UInt64]] = [:]
            for _ in 0..<n {
                let tag = try u16(first)
                let type = try u16(first + 2)
                let count = big ? Int(try u64(first + 4)) : try u32(first + 4)
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
                        count * width <= inlineSize ? valueAt : (big ? Int(try u64(valueAt)) : try u32(valueAt))
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
            let next = big ? Int(try u64(first)) : try u32(first)
            guard let w = fields[256]?.first, let h = fields[257]?.first, let tw = fields[322]?.first,
                let th = fields[323]?.first, let offsets = fields[324], let counts = fields[325], tw > 0, th > 0
            else { throw fail("a directory is not tiled") }
            let subfile = fields[254]?.first ?? 0
            let image = Image(
                width: Int(w), height: Int(h), tileWidth: Int(tw), tileHeight: Int(th),
                compression: Int(fields[259]?.first ?? 1), isMask: subfile & 4 != 0, offsets: offsets,
                byteCounts: counts)
            if image.isMask { masks.append(image) } else { images.append(image) }
            ifd = next
        }
        guard !images.isEmpty else { throw fail("no image") }
        guard masks.isEmpty || masks.count == images.count else { throw fail("masks do not match the images") }
        return (images, masks, big)
    }
}
