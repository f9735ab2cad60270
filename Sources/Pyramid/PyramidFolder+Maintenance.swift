import Foundation
import GeoGrid

/// One generation as `inspect` lists it.
public struct GenerationInfo: Sendable {
    public var generation: Int
    public var created: String
    public var shards: Int
    public var bytes: Int
    /// Shards whose file this generation was the first to list.
    public var newShards: Int
    public var restores: Int?
    public var isCurrent: Bool
}

/// A shard file of a pyramid as `gc` sees it: its path relative to the pyramid, size and date.
public struct StoredShardFile: Sendable {
    public var path: String
    public var size: Int
    public var modified: Date

    public init(path: String, size: Int, modified: Date) {
        self.path = path
        self.size = size
        self.modified = modified
    }
}

/// What `dallage gc` removed, or would remove.
public struct CollectionReport: Sendable {
    public var kept: [Int]
    /// Generations older than the kept ones but possibly still served: superseded less than the
    /// grace period ago.
    public var protected: [Int]
    public var dropped: [Int]
    public var deletedFiles: [String]
    public var freedBytes: Int
    /// Files no kept generation lists, left because they are younger than the grace period (an
    /// interrupted build's shards, which `--resume` reuses).
    public var youngFiles: Int
}

extension PyramidFolder {
    /// The kept generations, oldest first.
    public func history() throws -> [GenerationInfo] {
        let current = try self.current()
        var seen = Set<String>()
        var out: [GenerationInfo] = []
        for g in generations() {
            let m = try manifest(generation: g)
            let paths = Set(m.shards.map(\.path))
            out.append(
                GenerationInfo(
                    generation: g, created: m.created, shards: m.shards.count,
                    bytes: m.shards.reduce(0) { $0 + $1.bytes },
                    newShards: paths.subtracting(seen).count, restores: m.restores,
                    isCurrent: g == current?.generation))
            seen.formUnion(paths)
        }
        return out
    }

    /// Makes kept generation `g` current again, as a new generation (numbers only grow, so every
    /// reader and every later build sees a switch) that lists `g`'s shards. Refused, changing
    /// nothing, when `g` was collected, a shard it needs is gone, or it is what is served.
    @discardableResult
    public func rollback(to g: Int) throws -> PyramidManifest {
        let lock = try FileLock.build(self, doing: "the rollback")
        defer { withExtendedLifetime(lock) {} }
        guard let current = try current(), let now = current.generation else {
            throw GenerationError("\(directory) has no pyramid.json: nothing to roll back")
        }
        guard g != now else { throw GenerationError("generation \(g) is already the current one of \(directory)") }
        guard g < now else {
            throw GenerationError("generation \(g) of \(directory) was never made current (current: \(now))")
        }
        var target = try manifest(generation: g)
        if (target.restores ?? target.generation) == (current.restores ?? now) {
            throw GenerationError("generation \(g) lists the same shards as the current one (\(now)); nothing to do")
        }
        if let missing = missingShards(of: target).first {
            throw GenerationError(
                "generation \(g) of \(directory) needs \(missing), which is missing (collected or damaged); nothing changed"
            )
        }
        target.generation = now + 1
        target.restores = target.restores ?? g
        target.created = ISO8601DateFormatter().string(from: Date())
        try commit(target, sources: sources(generation: g))
        // The area really tiled is the restored generation's: coverage progress reads it.
        try TiledFootprint.record(try PyramidReader(directory: directory), directory: directory)
        return target
    }

    /// Shard files of `m` that are not on disk with their recorded size.
    public func missingShards(of m: PyramidManifest) -> [String] {
        m.shards.filter { s in
            (try? FileManager.default.attributesOfItem(atPath: path(s.path)))?[.size] as? Int != s.bytes
        }.map(\.path)
    }

    /// Removes shard files and generation records that no kept generation needs: the current
    /// generation and the `keep − 1` before it are kept; an older one stays while it stopped
    /// being current less than `grace` seconds ago (a server may still serve it until its next
    /// rescan); a file no generation lists stays while younger than `grace` (an interrupted
    /// build's). Refused, deleting nothing, when a kept generation cannot be read or misses a
    /// shard: what it needs cannot then be known, and the store is already damaged.
    public func collect(keep: Int, grace: TimeInterval, dryRun: Bool, now: Date = Date()) throws -> CollectionReport {
        guard keep >= 1 else {
            throw GenerationError("--keep must be at least 1: the current generation is always kept")
        }
        let lock = try FileLock.build(self, doing: "gc")
        defer { withExtendedLifetime(lock) {} }
        guard let current = try current(), let currentGeneration = current.generation else {
            throw GenerationError("\(directory) has no pyramid.json: nothing to collect")
        }
        let all = generations()
        var manifests: [Int: Result<PyramidManifest, any Error>] = [:]
        for g in all where g <= currentGeneration {
            manifests[g] = Result { try manifest(generation: g) }
        }
        let root = path("shards")
        var files: [StoredShardFile] = []
        if let e = FileManager.default.enumerator(atPath: root) {
            while let f = e.nextObject() as? String {
                guard f.hasSuffix(".tif"),
                    let attributes = try? FileManager.default.attributesOfItem(atPath: path("shards/" + f))
                else { continue }
                files.append(
                    StoredShardFile(
                        path: "shards/" + f, size: (attributes[.size] as? Int) ?? 0,
                        modified: (attributes[.modificationDate] as? Date) ?? now))
            }
        }
        let report = try Self.collection(
            of: directory, keep: keep, current: currentGeneration, generations: all, manifests: manifests,
            files: files, missing: missingShards(of:), grace: grace, now: now)
        if !dryRun {
            for f in report.deletedFiles { try FileManager.default.removeItem(atPath: path(f)) }
            for g in report.dropped { try forget(generation: g) }
            removeEmptyFolders(under: root)
        }
        return report
    }

    /// What `gc` deletes from a pyramid, decided from what is stored, in a folder or a bucket alike:
    /// the current generation and the `keep − 1` before it are kept; an older one stays while it
    /// stopped being current less than `grace` seconds ago; a shard file no kept or protected
    /// generation lists goes, unless younger than `grace`. `manifests` holds each generation up to
    /// the current one as read (a kept one that could not be read refuses everything), `missing`
    /// names the shards of a manifest that are not stored whole.
    public static func collection(
        of location: String, keep: Int, current currentGeneration: Int, generations all: [Int],
        manifests read: [Int: Result<PyramidManifest, any Error>], files: [StoredShardFile],
        missing: (PyramidManifest) -> [String], grace: TimeInterval, now: Date
    ) throws -> CollectionReport {
        guard all.contains(currentGeneration) else {
            throw GenerationError(
                "generations/\(currentGeneration).json, the record of the current generation, is missing from \(location); nothing deleted"
            )
        }
        let committed = all.filter { $0 <= currentGeneration }
        let kept = Array(committed.suffix(keep))
        var manifests: [Int: PyramidManifest] = [:]
        for g in committed {
            switch read[g] {
            case .success(let m)?: manifests[g] = m
            case .failure(let error)? where kept.contains(g):
                throw GenerationError(
                    "kept generation \(g) of \(location) cannot be read (\(error)), so what it needs is unknown; nothing deleted"
                )
            default:
                // An unreadable generation that is not kept: dropped with the others.
                break
            }
        }
        // When each generation stopped being current: when the next one was made.
        let dates = ISO8601DateFormatter()
        var protected: [Int] = []
        for g in committed where !kept.contains(g) {
            guard let next = committed.first(where: { $0 > g }), let m = manifests[next],
                let switched = dates.date(from: m.created)
            else { continue }
            if now.timeIntervalSince(switched) < grace { protected.append(g) }
        }
        var needed = Set<String>()
        for g in kept + protected {
            guard let m = manifests[g] else { continue }
            if kept.contains(g), let gone = missing(m).first {
                throw GenerationError(
                    "kept generation \(g) of \(location) needs \(gone), which is missing or damaged; nothing deleted (rebuild with `dallage tile`, then collect)"
                )
            }
            needed.formUnion(m.shards.map(\.path))
        }
        let dropped = all.filter { !kept.contains($0) && !protected.contains($0) }
        var deleted: [String] = []
        var freed = 0
        var young = 0
        for f in files.sorted(by: { $0.path < $1.path }) where !needed.contains(f.path) {
            if now.timeIntervalSince(f.modified) < grace {
                young += 1
                continue
            }
            deleted.append(f.path)
            freed += f.size
        }
        return CollectionReport(
            kept: kept, protected: protected, dropped: dropped, deletedFiles: deleted, freedBytes: freed,
            youngFiles: young)
    }

    private func removeEmptyFolders(under root: String) {
        let fm = FileManager.default
        guard let e = fm.enumerator(atPath: root) else { return }
        var folders: [String] = []
        while let f = e.nextObject() as? String {
            var isDir: ObjCBool = false
            let full = (root as NSString).appendingPathComponent(f)
            if fm.fileExists(atPath: full, isDirectory: &isDir), isDir.boolValue { folders.append(full) }
        }
        // Deepest first, so a folder emptied by removing its children goes too.
        for f in folders.sorted(by: { $0.count > $1.count })
        where (try? fm.contentsOfDirectory(atPath: f))?.isEmpty == true {
            try? fm.removeItem(atPath: f)
        }
    }
}
