import Foundation
import GeoGrid

/// Why a pyramid's generations cannot be read, switched or collected as asked. Nothing is
/// written or deleted when one is thrown.
public struct GenerationError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) { self.description = description }
}

/// What the tiler recorded of the dalles behind one generation, beside its manifest
/// (`generations/<g>.sources.json`): the next build compares its sources with these to find
/// the dalles added, changed and removed, and rebuilds only where they lie.
public struct GenerationSources: Sendable, Codable, Equatable {
    /// One dalle as the build used it.
    public struct Dalle: Sendable, Codable, Equatable {
        public var path: String
        public var bytes: Int
        public var modified: Double
        /// Footprint in the grid's CRS.
        public var footprint: BoundingBox
        /// Pixel size in the grid's units (the margin a resampling kernel reaches out).
        public var resolution: Double

        public init(path: String, bytes: Int, modified: Double, footprint: BoundingBox, resolution: Double) {
            self.path = path
            self.bytes = bytes
            self.modified = modified
            self.footprint = footprint
            self.resolution = resolution
        }
    }

    /// Every setting that changes the pixels or the layout (grid, levels, format, quality,
    /// resamplings): a build with other settings cannot reuse anything.
    public var settings: String
    public var dalles: [Dalle]

    public init(settings: String, dalles: [Dalle]) {
        self.settings = settings
        self.dalles = dalles
    }
}

/// A finished shard of a build in progress (`done/<z>/<col>/<row>.json`), written as soon as
/// its file is in place: `--resume`, cluster workers and the finisher read these, in a folder
/// or a bucket alike. `path` is nil for a planned shard that turned out empty.
public struct ShardRecord: Sendable, Codable, Equatable {
    /// The plan the shard was built for: a record of another plan is not trusted.
    public var plan: String
    public var path: String?
    public var bytes: Int
    public var crc32: String
    public var tiles: Int
    /// Tiles copied as stored bytes from the previous generation, and tiles encoded anew.
    public var copied: Int
    public var encoded: Int

    public init(plan: String, path: String?, bytes: Int, crc32: String, tiles: Int, copied: Int, encoded: Int) {
        self.plan = plan
        self.path = path
        self.bytes = bytes
        self.crc32 = crc32
        self.tiles = tiles
        self.copied = copied
        self.encoded = encoded
    }
}

/// One pyramid folder (`<store>/<tileset>/<grid>`) and its generations, as DESIGN.md fixes
/// them: `pyramid.json` is the switch, written last and only over the generation it replaces
/// (compare-and-swap); `generations/<g>.json` is the immutable copy of each generation; a shard
/// a kept generation lists is never overwritten (a rebuilt one gets a new path); `done/` holds
/// the records of the build in progress.
public struct PyramidFolder: Sendable {
    public let directory: String

    public init(_ directory: String) { self.directory = directory }

    /// The manifest format this version writes: 2 added generations.
    public static let formatVersion = 2

    /// Where a shard built for generation `g` lives, relative to the pyramid folder.
    public static func shardPath(_ shard: TileCoordinate, generation g: Int) -> String {
        "shards/\(shard.z)/\(shard.col)/\(shard.row).g\(g).tif"
    }

    public func path(_ relative: String) -> String { (directory as NSString).appendingPathComponent(relative) }

    var generationsDirectory: String { path("generations") }

    func generationPath(_ g: Int) -> String { path("generations/\(g).json") }
    func sourcesPath(_ g: Int) -> String { path("generations/\(g).sources.json") }

    /// The current manifest, nil when the folder has none yet.
    public func current() throws -> PyramidManifest? {
        guard FileManager.default.fileExists(atPath: path(PyramidManifest.fileName)) else { return nil }
        let m = try PyramidManifest.load(directory: directory)
        try Self.checkFormat(m, in: directory)
        return m
    }

    /// Refuses manifests this version cannot build on: written before generations existed, or
    /// by a newer version.
    public static func checkFormat(_ m: PyramidManifest, in directory: String) throws {
        if m.formatVersion > formatVersion {
            throw GenerationError(
                "\(directory) was written by a newer dallage (manifest format \(m.formatVersion), this one reads up to \(formatVersion))"
            )
        }
        if m.generation == nil {
            throw GenerationError(
                "\(directory) was written by dallage before generations (manifest format \(m.formatVersion)): it has no generation to build on, roll back to or collect; tile into a new store (or move this folder away) and switch the server to it"
            )
        }
    }

    /// The generations kept in `generations/`, oldest first.
    public func generations() -> [Int] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: generationsDirectory)) ?? []
        return names.compactMap { n -> Int? in
            guard n.hasSuffix(".json"), !n.hasSuffix(".sources.json") else { return nil }
            return Int(n.dropLast(5))
        }.sorted()
    }

    /// The manifest of generation `g`.
    public func manifest(generation g: Int) throws -> PyramidManifest {
        let file = generationPath(g)
        guard FileManager.default.fileExists(atPath: file) else {
            let kept = generations().map(String.init).joined(separator: ", ")
            throw GenerationError(
                "generation \(g) of \(directory) is not kept (collected or never built); kept: \(kept.isEmpty ? "none" : kept)"
            )
        }
        let m = try JSONDecoder().decode(PyramidManifest.self, from: Data(contentsOf: URL(fileURLWithPath: file)))
        try Self.checkFormat(m, in: directory)
        return m
    }

    /// The dalles generation `g` was built from; nil when not recorded.
    public func sources(generation g: Int) -> GenerationSources? {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: sourcesPath(g))) else { return nil }
        return try? JSONDecoder().decode(GenerationSources.self, from: data)
    }

    /// Makes `manifest` current if the current generation is still `manifest.generation − 1`
    /// (none for generation 1): writes `generations/<g>.json` (and its sources), then
    /// `pyramid.json` by rename. Throws, changing nothing, when another build switched first.
    public func commit(_ manifest: PyramidManifest, sources: GenerationSources?) throws {
        guard let g = manifest.generation, g >= 1 else {
            throw GenerationError("a manifest to commit needs a generation")
        }
        try FileManager.default.createDirectory(atPath: generationsDirectory, withIntermediateDirectories: true)
        try FileLock.holding(path(".switch.lock"), wait: true) {
            let now = try current()?.generation ?? 0
            guard now == g - 1 else {
                throw GenerationError(
                    "\(directory) moved to generation \(now) while this build made generation \(g) from \(g - 1): another build of the same tileset switched first; nothing of this build was made current (its shards stay until `dallage gc`)"
                )
            }
            if let sources { try Self.writeAtomically(try Self.encode(sources, pretty: false), to: sourcesPath(g)) }
            let data = try Self.encode(manifest, pretty: true)
            try Self.writeAtomically(data, to: generationPath(g))
            try Self.writeAtomically(data, to: path(PyramidManifest.fileName))
        }
    }

    /// Removes a generation's files from `generations/` (gc, after checking nothing kept needs it).
    func forget(generation g: Int) throws {
        for file in [generationPath(g), sourcesPath(g)] where FileManager.default.fileExists(atPath: file) {
            try FileManager.default.removeItem(atPath: file)
        }
    }

    // MARK: Shard records

    func recordPath(_ shard: TileCoordinate) -> String { path("done/\(shard.z)/\(shard.col)/\(shard.row).json") }

    /// Records a finished shard (atomically: a killed build leaves a record whole or absent).
    public func record(_ record: ShardRecord, for shard: TileCoordinate) throws {
        let file = recordPath(shard)
        try FileManager.default.createDirectory(
            atPath: (file as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Self.writeAtomically(try Self.encode(record, pretty: false), to: file)
    }

    /// Every shard record there, whatever its plan.
    public func records() -> [TileCoordinate: ShardRecord] {
        let root = path("done")
        guard let e = FileManager.default.enumerator(atPath: root) else { return [:] }
        var out: [TileCoordinate: ShardRecord] = [:]
        while let f = e.nextObject() as? String {
            let parts = f.split(separator: "/")
            guard parts.count == 3, parts[2].hasSuffix(".json"), let z = Int(parts[0]), let c = Int(parts[1]),
                let r = Int(parts[2].dropLast(5)),
                let data = try? Data(contentsOf: URL(fileURLWithPath: (root as NSString).appendingPathComponent(f))),
                let record = try? JSONDecoder().decode(ShardRecord.self, from: data)
            else { continue }
            out[TileCoordinate(z: z, col: c, row: r)] = record
        }
        return out
    }

    /// Drops the records of a build once its generation is current.
    public func clearRecords() { try? FileManager.default.removeItem(atPath: path("done")) }

    // MARK: Files

    static func encode<T: Encodable>(_ value: T, pretty: Bool) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys]
        return try encoder.encode(value)
    }

    /// Writes through a hidden temporary name and renames, so readers see the old file or the new.
    static func writeAtomically(_ data: Data, to file: String) throws {
        let dir = (file as NSString).deletingLastPathComponent
        let tmp = (dir as NSString).appendingPathComponent(
            ".\((file as NSString).lastPathComponent).\(ShardWriter.writerToken).tmp")
        try data.write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, file) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(tmp)
            throw GenerationError("cannot write \(file): \(why)")
        }
    }
}

/// An advisory lock on a file (`flock`): held by one process at a time, released by the kernel
/// when the process dies, so a killed build never leaves a stale lock behind.
public final class FileLock: @unchecked Sendable {
    private let fd: Int32
    public let path: String

    /// Takes the lock, waiting for it when `wait`, else throwing at once with `busy` as the message.
    public init(_ path: String, wait: Bool, busy: @autoclosure () -> String = "locked") throws {
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw GenerationError("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, wait ? LOCK_EX : LOCK_EX | LOCK_NB) == 0 else {
            let code = errno
            close(fd)
            if code == EWOULDBLOCK { throw GenerationError(busy()) }
            throw GenerationError("cannot lock \(path): \(String(cString: strerror(code)))")
        }
    }

    deinit { close(fd) }

    /// Whether the file locked is still the one at `path`: a holder that removes the folder when
    /// it ends (a worker's staging folder) leaves a waiter locking a file no longer there.
    public var isStillAtItsPath: Bool {
        var held = stat()
        var current = stat()
        guard fstat(fd, &held) == 0, stat(path, &current) == 0 else { return false }
        return held.st_dev == current.st_dev && held.st_ino == current.st_ino
    }

    /// Runs `body` holding the lock on `path`.
    public static func holding<R>(_ path: String, wait: Bool, _ body: () throws -> R) throws -> R {
        let lock = try FileLock(path, wait: wait)
        defer { withExtendedLifetime(lock) {} }
        return try body()
    }

    /// The lock a build, a rollback or a gc of one pyramid holds for its whole run.
    public static func build(_ folder: PyramidFolder, doing what: String) throws -> FileLock {
        try FileManager.default.createDirectory(atPath: folder.directory, withIntermediateDirectories: true)
        return try FileLock(
            folder.path(".build.lock"), wait: false,
            busy:
                "another dallage process is building, rolling back or collecting \(folder.directory) now; \(what) waits for it to finish (run it again then)"
        )
    }
}
