import Foundation
import Raster
import Synchronization

/// The encoding of a pyramid's tiles.
public enum TileFormat: String, Sendable, Codable, CaseIterable {
    /// Baseline JPEG, YCbCr 4:2:0, each tile a complete stream; transparency in a 1-bit mask.
    case jpeg
    /// WebP with alpha, each tile a complete RIFF stream.
    case webp

    /// The file extension and MIME type of a stored tile.
    public var fileExtension: String { self == .jpeg ? "jpg" : "webp" }
    public var mimeType: String { self == .jpeg ? "image/jpeg" : "image/webp" }
}

/// Where a shard sits on the ground and what it holds.
public struct ShardGeometry: Sendable, Hashable {
    /// Top-left corner of the shard in the grid's CRS.
    public var originX: Double
    public var originY: Double
    /// Cell size of the full-resolution image (the band's deepest level).
    public var resolution: Double
    /// Levels stored: the full-resolution image and `levelCount - 1` overviews.
    public var levelCount: Int
    public var tileSize: Int
    /// EPSG code written in the GeoTIFF keys.
    public var epsg: Int
    /// Tiles across and down the full-resolution image: a square of `1 << (levelCount - 1)` for a
    /// pyramid shard, any rectangle for an extract.
    public var columns: Int
    public var rows: Int

    public init(originX: Double, originY: Double, resolution: Double, levelCount: Int, tileSize: Int = 256, epsg: Int) {
        self.originX = originX
        self.originY = originY
        self.resolution = resolution
        self.levelCount = levelCount
        self.tileSize = tileSize
        self.epsg = epsg
        columns = 1 << (levelCount - 1)
        rows = columns
    }

    /// An image of `columns` × `rows` tiles, with `levelCount - 1` overviews (each half the one
    /// above, its tile counts rounded up).
    public init(
        originX: Double, originY: Double, resolution: Double, columns: Int, rows: Int, levelCount: Int = 1,
        tileSize: Int = 256, epsg: Int
    ) {
        self.init(
            originX: originX, originY: originY, resolution: resolution, levelCount: levelCount, tileSize: tileSize,
            epsg: epsg)
        self.columns = columns
        self.rows = rows
    }

    /// Tiles per side of a square shard's image at `overview` (0 = full resolution).
    public func tilesPerSide(overview: Int) -> Int { 1 << (levelCount - 1 - overview) }

    /// Tiles across and down the image at `overview`.
    public func tiles(overview: Int) -> (across: Int, down: Int) {
        ((columns + (1 << overview) - 1) >> overview, (rows + (1 << overview) - 1) >> overview)
    }
}

/// What a finished shard is: its size and checksum, as recorded in pyramid.json.
public struct ShardSummary: Sendable, Hashable, Codable {
    public var bytes: Int
    public var crc32: UInt32
    public var tiles: Int

    public init(bytes: Int, crc32: UInt32, tiles: Int) {
        self.bytes = bytes
        self.crc32 = crc32
        self.tiles = tiles
    }
}

/// Writes one COG shard. Tiles arrive in any order and are spooled beside the shard; `finish()`
/// lays out the COG (IFDs first, then tiles from the smallest overview to the full resolution,
/// row-major, each mask tile right after its image tile), writes it under a temporary name,
/// flushes it and renames it: a reader never sees half a shard.
public final class ShardWriter: @unchecked Sendable {
    public let path: String
    public let geometry: ShardGeometry
    public let format: TileFormat

    private struct Entry {
        var offset: Int = 0
        var length: Int = 0
        var maskOffset: Int = 0
        var maskLength: Int = 0  // 0 = fully opaque
        /// Where the bytes are: -1 in the spool, else an index in `sources`.
        var source: Int = -1
    }

    private let spoolPath: String
    private var spool: Int32
    private var spoolSize = 0
    private var entries: [[Entry]]
    private var anyPartial = false
    /// Shards whose tiles are copied by reference: read once, straight into the final file.
    private var sources: [ShardReader] = []
    private var finished = false
    /// Serialises `add` from the workers that build a shard's quadrants.
    private let lock = NSLock()

    /// A 256×256 mask tile with every pixel valid, DEFLATE-compressed once.
    public static let fullMask: [UInt8] = {
        let raw = [UInt8](repeating: 0xFF, count: 256 * 256 / 8)
        return (try? raw.withUnsafeBytes { try Deflate.compress($0) }) ?? []
    }()

    /// Packs alpha ≥ 128 of an RGBA tile into a 1-bit, MSB-first TIFF mask (`size`/8 bytes per
    /// row), to be DEFLATE-compressed for `add`.
    public static func packMask(
        _ p: UnsafePointer<UInt8>, stride: Int, size: Int, into out: UnsafeMutablePointer<UInt8>
    ) {
        let rowBytes = size / 8
        for y in 0..<size {
            let row = p + y * stride
            for b in 0..<rowBytes {
                var byte: UInt8 = 0
                for k in 0..<8 { byte = (byte << 1) | (row[(b * 8 + k) * 4 + 3] >> 7) }
                out[y * rowBytes + b] = byte
            }
        }
    }

    /// Dataset metadata items written in GDAL's tag (what `gdalinfo` lists): an extract's layer
    /// and vintage.
    public var metadata: [(key: String, value: String)] = []

    static func xml(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    public init(path: String, geometry: ShardGeometry, format: TileFormat) throws {
        self.path = path
        self.geometry = geometry
        self.format = format
        let dir = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        spoolPath = Self.temporaryName(for: path, suffix: "spool")
        spool = open(spoolPath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard spool >= 0 else { throw RasterError("cannot create \(spoolPath): \(String(cString: strerror(errno)))") }
        entries = (0..<geometry.levelCount).map { o in
            let n = geometry.tiles(overview: o)
            return [Entry](repeating: Entry(), count: n.across * n.down)
        }
    }

    deinit {
        if spool >= 0 { Foundation.close(spool) }
        unlink(spoolPath)
    }

    /// A hidden name beside `path` that no reader takes for a shard, and no other writer uses.
    static func temporaryName(for path: String, suffix: String) -> String {
        let dir = (path as NSString).deletingLastPathComponent
        let name = (path as NSString).lastPathComponent
        return "\(dir)/.\(name).\(writerToken).\(suffix)"
    }

    /// This process among every writer of a shared store: cluster workers on several machines
    /// can have one process id, and a requeued copy of a worker writes the same shards.
    static let writerToken: String = {
        var host = [CChar](repeating: 0, count: 256)
        let name = gethostname(&host, host.count) == 0 ? String(cString: host) : "host"
        let safe = name.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "_" }
        return "\(String(safe.prefix(64)))-\(getpid())-\(String(UInt32.random(in: .min ... .max), radix: 16))"
    }()

    /// Adds one tile. `mask` is the DEFLATE-compressed 1-bit mask, nil when every pixel is valid.
    public func add(
        overview: Int, col: Int, row: Int, tile: UnsafeRawBufferPointer, mask: UnsafeRawBufferPointer?
    ) throws {
        let n = geometry.tiles(overview: overview)
        precondition(col >= 0 && col < n.across && row >= 0 && row < n.down, "tile outside the shard")
        lock.lock()
        defer { lock.unlock() }
        var e = Entry(offset: spoolSize, length: tile.count)
        try append(tile)
        if let mask {
            e.maskOffset = spoolSize
            e.maskLength = mask.count
            try append(mask)
            anyPartial = true
        }
        entries[overview][row * n.across + col] = e
    }

    /// Adds the tile stored at the same place in `previous` (a version of this shard), copying its
    /// bytes and mask straight into the final file at `finish()` rather than through the spool.
    /// False when `previous` has no tile there.
    @discardableResult
    public func add(overview: Int, col: Int, row: Int, from previous: ShardReader) throws -> Bool {
        let n = geometry.tiles(overview: overview)
        precondition(col >= 0 && col < n.across && row >= 0 && row < n.down, "tile outside the shard")
        guard let tile = try previous.tileRange(overview: overview, col: col, row: row) else { return false }
        var e = Entry(offset: Int(tile.offset), length: tile.count)
        if let mask = try previous.maskRange(overview: overview, col: col, row: row) {
            // A stored full mask means "every pixel valid": kept as no mask, like a fresh tile.
            var full = mask.count == Self.fullMask.count
            if full {
                var bytes = [UInt8](repeating: 0, count: mask.count)
                try bytes.withUnsafeMutableBytes { try previous.read(at: mask.offset, into: $0) }
                full = bytes == Self.fullMask
            }
            if !full { (e.maskOffset, e.maskLength) = (Int(mask.offset), mask.count) }
        }
        lock.lock()
        defer { lock.unlock() }
        if let i = sources.firstIndex(where: { $0 === previous }) {
            e.source = i
        } else {
            e.source = sources.count
            sources.append(previous)
        }
        if e.maskLength > 0 { anyPartial = true }
        entries[overview][row * n.across + col] = e
        return true
    }

    private func append(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(spool, bytes.baseAddress! + done, bytes.count - done, off_t(spoolSize + done))
            guard n > 0 else { throw RasterError("cannot write \(spoolPath): \(String(cString: strerror(errno)))") }
            done += n
        }
        spoolSize += bytes.count
    }

    /// The number of tiles added so far.
    public var tileCount: Int { entries.reduce(0) { $0 + $1.filter { $0.length > 0 }.count } }

    /// Lays out and writes the COG, then renames it to `path`. Returns nil (and writes nothing)
    /// when no tile was added.
    /// `parallelism` threads write a large shard at once. With `sync` false the file is not
    /// flushed to disk before it is renamed: the caller flushes it with ``sync(path:)`` before
    /// anything points to it, and may go on with other work meanwhile. Files smaller than
    /// `parallelAbove` bytes are written by one thread.
    public func finish(
        parallelism: Int = 1, sync: Bool = true, parallelAbove: Int = ShardWriter.parallelWriteBytes
    ) throws -> ShardSummary? {
        precondition(!finished)
        finished = true
        let tiles = tileCount
        guard tiles > 0 else { return nil }
        let absent = entries.contains { $0.contains { $0.length == 0 } }
        let hasMask = format == .jpeg && (anyPartial || absent)
        let fullMask = Self.fullMask

        // Data size decides between classic TIFF and BigTIFF.
        var dataSize = 0
        for level in entries {
            for e in level where e.length > 0 {
                dataSize += e.length + (hasMask ? (e.maskLength > 0 ? e.maskLength : fullMask.count) : 0)
            }
        }
        var bigTIFF = false
        var directories = makeDirectories(hasMask: hasMask, bigTIFF: false)
        let ghost = Self.ghostHeader(hasMask: hasMask)
        var headerSize = 8 + ghost.count
        if headerSize + directories.reduce(0, { $0 + $1.size(bigTIFF: false) }) + dataSize > Int(UInt32.max) - 1024 {
            bigTIFF = true
            directories = makeDirectories(hasMask: hasMask, bigTIFF: true)
            headerSize = 16 + ghost.count
        }
        headerSize += headerSize & 1

        // Assign tile data offsets: smallest overview first, row-major, mask right after image.
        var offset = headerSize + directories.reduce(0) { $0 + $1.size(bigTIFF: bigTIFF) }
        var imageOffsets = entries.map { [UInt64](repeating: 0, count: $0.count) }
        var maskOffsets = imageOffsets
        for o in stride(from: geometry.levelCount - 1, through: 0, by: -1) {
            for (i, e) in entries[o].enumerated() where e.length > 0 {
                imageOffsets[o][i] = UInt64(offset)
                offset += e.length
                if hasMask {
                    maskOffsets[o][i] = UInt64(offset)
                    offset += e.maskLength > 0 ? e.maskLength : fullMask.count
                }
            }
        }
        let total = offset

        // Fill the offset and byte count arrays and serialise the directories.
        var d = 0
        for o in 0..<geometry.levelCount {
            let counts = entries[o].map { UInt64($0.length) }
            setArrays(&directories[d], offsets: imageOffsets[o], counts: counts, bigTIFF: bigTIFF)
            d += 1
            if hasMask {
                let maskCounts = entries[o].map {
                    UInt64($0.length == 0 ? 0 : ($0.maskLength > 0 ? $0.maskLength : fullMask.count))
                }
                setArrays(&directories[d], offsets: maskOffsets[o], counts: maskCounts, bigTIFF: bigTIFF)
                d += 1
            }
        }
        var header: [UInt8] = [0x49, 0x49]
        if bigTIFF {
            header.appendLE(UInt16(43))
            header.appendLE(UInt16(8))
            header.appendLE(UInt16(0))
            header.appendLE(UInt64(headerSize))
        } else {
            header.appendLE(UInt16(42))
            header.appendLE(UInt32(headerSize))
        }
        header += ghost
        if header.count & 1 == 1 { header.append(0) }
        var position = headerSize
        for (i, dir) in directories.enumerated() {
            let size = dir.size(bigTIFF: bigTIFF)
            let next = i + 1 < directories.count ? position + size : 0
            header += dir.serialise(at: position, next: next, bigTIFF: bigTIFF)
            position += size
        }
        precondition(header.count == position)

        // The file's pieces in order: the header, then each tile with its mask right after.
        var pieces: [Piece] = [Piece(from: .header, offset: 0, length: header.count)]
        for o in stride(from: geometry.levelCount - 1, through: 0, by: -1) {
            for e in entries[o] where e.length > 0 {
                pieces.append(
                    Piece(from: e.source >= 0 ? .shard(e.source) : .spool, offset: e.offset, length: e.length))
                if hasMask {
                    pieces.append(
                        e.maskLength > 0
                            ? Piece(
                                from: e.source >= 0 ? .shard(e.source) : .spool, offset: e.maskOffset,
                                length: e.maskLength)
                            : Piece(from: .fullMask, offset: 0, length: fullMask.count))
                }
            }
        }

        // Write the final file under a temporary name, then rename. A large shard is written in
        // `parallelism` consecutive segments at once, each with its own CRC, combined at the end:
        // the shard a tranche rebuilds is mostly tiles copied from its previous version, and one
        // thread copying them while the others wait for the band to end was a third of the build.
        let temporary = Self.temporaryName(for: path, suffix: "tmp")
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RasterError("cannot create \(temporary): \(String(cString: strerror(errno)))") }
        defer { Foundation.close(fd) }
        do {
            let segments = Self.segments(pieces, count: total >= parallelAbove ? max(1, parallelism) : 1)
            let starts = segments.map { pieces[..<$0.lowerBound].reduce(0) { $0 + $1.length } }
            let (pieces, header) = (pieces, header)
            let results = Mutex<[Int: Result<(crc: UInt32, bytes: Int), Error>]>([:])
            let spool = self.spool
            let spoolPath = self.spoolPath
            let sources = self.sources
            let target = UncheckedFile(fd: fd, path: temporary)
            // Segments past the first get threads of their own; the caller writes the first. (Not
            // `concurrentPerform`: called from the tiler's own, it runs them one by one; nor the
            // global queue: while the tiler's workers hold its threads, Dispatch waited up to
            // 0.7 s before it started one more.)
            let group = DispatchGroup()
            let writeSegment: @Sendable (Int) -> Void = { k in
                let result = Result {
                    try Self.write(
                        pieces[segments[k]], at: starts[k],
                        to: target, header: header, spool: (spool, spoolPath), sources: sources)
                }
                results.withLock { $0[k] = result }
            }
            for k in segments.indices.dropFirst() {
                group.enter()
                Thread {
                    writeSegment(k)
                    group.leave()
                }.start()
            }
            writeSegment(0)
            group.wait()
            var crc: UInt32 = 0
            var written = 0
            for k in segments.indices {
                guard let result = results.withLock({ $0[k] }) else {
                    throw RasterError("shard segment \(k) not written")
                }
                let part = try result.get()
                crc = Deflate.crc32Combine(crc, part.crc, secondLength: part.bytes)
                written += part.bytes
            }
            precondition(written == total, "shard layout and content disagree")
            if sync, fsync(fd) != 0 {
                throw RasterError("cannot sync \(temporary): \(String(cString: strerror(errno)))")
            }
            guard rename(temporary, path) == 0 else {
                throw RasterError("cannot rename \(temporary): \(String(cString: strerror(errno)))")
            }
            Foundation.close(self.spool)
            self.spool = -1
            unlink(spoolPath)
            return ShardSummary(bytes: total, crc32: crc, tiles: tiles)
        } catch {
            unlink(temporary)
            throw error
        }
    }

    /// Flushes a file written by `finish(sync: false)` to disk.
    public static func sync(path: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw RasterError("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { Foundation.close(fd) }
        guard fsync(fd) == 0 else { throw RasterError("cannot sync \(path): \(String(cString: strerror(errno)))") }
    }

    /// Below this size a shard is written by one thread: splitting buys nothing.
    public static let parallelWriteBytes = 32 << 20

    /// Where a piece of the final file comes from.
    private enum PieceSource {
        case header
        case spool
        case shard(Int)
        case fullMask
    }

    private struct Piece {
        var from: PieceSource
        var offset: Int
        var length: Int
    }

    /// Consecutive runs of pieces of about equal bytes, at most `count`.
    private static func segments(_ pieces: [Piece], count: Int) -> [Range<Int>] {
        let total = pieces.reduce(0) { $0 + $1.length }
        guard count > 1, !pieces.isEmpty else { return [0..<pieces.count] }
        var cuts: [Range<Int>] = []
        var start = 0
        var bytes = 0
        for (i, p) in pieces.enumerated() {
            bytes += p.length
            if bytes * count >= total * (cuts.count + 1), cuts.count < count - 1 {
                cuts.append(start..<(i + 1))
                start = i + 1
            }
        }
        cuts.append(start..<pieces.count)
        return cuts.filter { !$0.isEmpty }
    }

    /// Writes `pieces` from `position` on, through a buffer of its own; answers their CRC-32.
    private static func write(
        _ pieces: ArraySlice<Piece>, at position: Int, to file: UncheckedFile, header: [UInt8],
        spool: (fd: Int32, path: String), sources: [ShardReader]
    ) throws -> (crc: UInt32, bytes: Int) {
        let capacity = 4 << 20
        var buffer = [UInt8](repeating: 0, count: capacity)
        var used = 0
        var position = position
        var crc: UInt32 = 0
        var bytes = 0
        func flush() throws {
            try buffer.withUnsafeBytes { try file.write(UnsafeRawBufferPointer(rebasing: $0[..<used]), at: position) }
            position += used
            used = 0
        }
        for p in pieces {
            if used + p.length > capacity { try flush() }
            if p.length > capacity { buffer = [UInt8](repeating: 0, count: p.length) }
            try buffer.withUnsafeMutableBytes { buf in
                let part = UnsafeMutableRawBufferPointer(rebasing: buf[used..<(used + p.length)])
                switch p.from {
                case .header:
                    header.withUnsafeBytes { part.copyMemory(from: $0) }
                case .fullMask:
                    fullMask.withUnsafeBytes { part.copyMemory(from: $0) }
                case .shard(let i):
                    try sources[i].read(at: UInt64(p.offset), into: part)
                case .spool:
                    var done = 0
                    while done < p.length {
                        let n = pread(spool.fd, part.baseAddress! + done, p.length - done, off_t(p.offset + done))
                        if n < 0, errno == EINTR { continue }
                        guard n > 0 else { throw RasterError("cannot read back \(spool.path)") }
                        done += n
                    }
                }
                crc = Deflate.crc32(UnsafeRawBufferPointer(part), previous: crc)
            }
            used += p.length
            bytes += p.length
        }
        try flush()
        return (crc, bytes)
    }

    private func setArrays(_ dir: inout TIFFDirectory, offsets: [UInt64], counts: [UInt64], bigTIFF: Bool) {
        if bigTIFF {
            dir.set(TIFFTag.tileOffsets, .long8s(offsets))
            dir.set(TIFFTag.tileByteCounts, .long8s(counts))
        } else {
            dir.set(TIFFTag.tileOffsets, .longs(offsets.map { UInt32($0) }))
            dir.set(TIFFTag.tileByteCounts, .longs(counts.map { UInt32($0) }))
        }
    }

    private func makeDirectories(hasMask: Bool, bigTIFF: Bool) -> [TIFFDirectory] {
        var dirs: [TIFFDirectory] = []
        let ts = geometry.tileSize
        for o in 0..<geometry.levelCount {
            let n = geometry.tiles(overview: o)
            // Each overview is exactly half the one above: its last tiles may be partly empty.
            let width = UInt32(max(1, (geometry.columns * ts) >> o))
            let length = UInt32(max(1, (geometry.rows * ts) >> o))
            var img = TIFFDirectory()
            img.set(TIFFTag.newSubfileType, .longs([o == 0 ? 0 : 1]))
            img.set(TIFFTag.imageWidth, .longs([width]))
            img.set(TIFFTag.imageLength, .longs([length]))
            img.set(TIFFTag.planarConfiguration, .shorts([1]))
            img.set(TIFFTag.tileWidth, .shorts([UInt16(ts)]))
            img.set(TIFFTag.tileLength, .shorts([UInt16(ts)]))
            img.set(TIFFTag.sampleFormat, .shorts(format == .jpeg ? [1, 1, 1] : [1, 1, 1, 1]))
            switch format {
            case .jpeg:
                img.set(TIFFTag.bitsPerSample, .shorts([8, 8, 8]))
                img.set(TIFFTag.compression, .shorts([7]))
                img.set(TIFFTag.photometric, .shorts([6]))
                img.set(TIFFTag.samplesPerPixel, .shorts([3]))
                img.set(TIFFTag.ycbcrSubSampling, .shorts([2, 2]))
            case .webp:
                img.set(TIFFTag.bitsPerSample, .shorts([8, 8, 8, 8]))
                img.set(TIFFTag.compression, .shorts([50001]))
                img.set(TIFFTag.photometric, .shorts([2]))
                img.set(TIFFTag.samplesPerPixel, .shorts([4]))
                img.set(TIFFTag.extraSamples, .shorts([2]))
            }
            if o == 0 {
                let g = geometry
                img.set(TIFFTag.modelPixelScale, .doubles([g.resolution, g.resolution, 0]))
                img.set(TIFFTag.modelTiepoint, .doubles([0, 0, 0, g.originX, g.originY, 0]))
                img.set(
                    TIFFTag.geoKeyDirectory,
                    .shorts([1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, UInt16(g.epsg)]))
                if !metadata.isEmpty {
                    let items = metadata.map { "<Item name=\"\(Self.xml($0.key))\">\(Self.xml($0.value))</Item>" }
                    img.set(TIFFTag.gdalMetadata, .ascii("<GDALMetadata>\(items.joined())</GDALMetadata>"))
                }
            }
            let placeholder = [UInt64](repeating: 0, count: n.across * n.down)
            setArrays(&img, offsets: placeholder, counts: placeholder, bigTIFF: bigTIFF)
            dirs.append(img)
            if hasMask {
                var mask = TIFFDirectory()
                mask.set(TIFFTag.newSubfileType, .longs([o == 0 ? 4 : 5]))
                mask.set(TIFFTag.imageWidth, .longs([width]))
                mask.set(TIFFTag.imageLength, .longs([length]))
                mask.set(TIFFTag.bitsPerSample, .shorts([1]))
                mask.set(TIFFTag.compression, .shorts([8]))
                mask.set(TIFFTag.photometric, .shorts([4]))
                mask.set(TIFFTag.samplesPerPixel, .shorts([1]))
                mask.set(TIFFTag.planarConfiguration, .shorts([1]))
                mask.set(TIFFTag.tileWidth, .shorts([UInt16(ts)]))
                mask.set(TIFFTag.tileLength, .shorts([UInt16(ts)]))
                mask.set(TIFFTag.sampleFormat, .shorts([1]))
                setArrays(&mask, offsets: placeholder, counts: placeholder, bigTIFF: bigTIFF)
                dirs.append(mask)
            }
        }
        return dirs
    }

    /// GDAL's COG "ghost" header, which tells readers the layout guarantees of the file.
    static func ghostHeader(hasMask: Bool) -> [UInt8] {
        var body = "LAYOUT=IFDS_BEFORE_DATA\nBLOCK_ORDER=ROW_MAJOR\nKNOWN_INCOMPATIBLE_EDITION=NO\n"
        if hasMask { body += "MASK_INTERLEAVED_WITH_IMAGERY=YES\n" }
        let first = "GDAL_STRUCTURAL_METADATA_SIZE=" + String(format: "%06d", body.utf8.count) + " bytes\n"
        return Array((first + body).utf8)
    }
}

/// A file written at given offsets by several threads at once (`pwrite` is safe so); the caller
/// owns the descriptor.
private struct UncheckedFile: @unchecked Sendable {
    let fd: Int32
    let path: String

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw RasterError("cannot write \(path): \(String(cString: strerror(errno)))") }
            done += n
        }
    }
}
