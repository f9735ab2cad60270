import Foundation
import GeoGrid
import Pyramid
import S3

/// `dallage rollback` and `dallage gc` on a pyramid in a bucket: what `PyramidFolder` does with
/// renames and unlinks, done with the bucket's atomic PUTs and deletes. The switch is
/// `BucketPyramid.commit`, the tiler's compare-and-swap on `pyramid.json`; what to delete is decided
/// by the folder's own rule (`PyramidFolder.collection`). Both hold the lock of the pyramid's
/// staging folder — the one `dallage tile --store s3://…` holds while it builds there — so on one
/// host a rollback, a gc and a build of one pyramid never overlap (across hosts, as for builds,
/// run one at a time).
public struct BucketGenerations: Sendable {
    /// The pyramid in the bucket.
    public let pyramid: BucketPyramid
    /// Its staging folder (`<root>/dallage-staging/<bucket>/<pyramid prefix>`, as the tiler's):
    /// the lock, and the shards' coarse levels a rollback traces the footprint from.
    public let staging: PyramidFolder

    /// The pyramid at `pyramid`, staged under `stagingRoot` (default `TMPDIR`, as `dallage tile`).
    public init(pyramid: BucketPyramid, stagingRoot: String? = nil) {
        self.pyramid = pyramid
        let root = stagingRoot ?? NSTemporaryDirectory()
        staging = PyramidFolder(
            (root as NSString).appendingPathComponent("dallage-staging/\(pyramid.bucket.name)/\(pyramid.prefix)"))
    }

    /// Makes kept generation `g` current again, as a new generation listing `g`'s shards (numbers
    /// only grow), and traces its footprint again. Refused, changing nothing, when `g` was
    /// collected, a shard it needs is not in the bucket with its recorded size, it is what is
    /// served, or another process switched the pyramid meanwhile.
    @discardableResult
    public func rollback(to g: Int, threads: Int = 2) throws -> PyramidManifest {
        let lock = try FileLock.build(staging, doing: "the rollback")
        defer { withExtendedLifetime(lock) {} }
        let pyramid = self.pyramid
        let url = pyramid.url
        guard let current = try waitFor({ try await pyramid.current()?.manifest }), let now = current.generation
        else { throw GenerationError("\(url) has no pyramid.json: nothing to roll back") }
        guard g != now else { throw GenerationError("generation \(g) is already the current one of \(url)") }
        guard g < now else {
            throw GenerationError("generation \(g) of \(url) was never made current (current: \(now))")
        }
        var target = try waitFor { try await pyramid.manifest(generation: g) }
        try PyramidFolder.checkFormat(target, in: url)
        if (target.restores ?? target.generation) == (current.restores ?? now) {
            throw GenerationError("generation \(g) lists the same shards as the current one (\(now)); nothing to do")
        }
        let sizes = try waitFor { try await pyramid.shardSizes() }
        if let missing = target.shards.first(where: { sizes[$0.path] != $0.bytes }) {
            throw GenerationError(
                "generation \(g) of \(url) needs \(missing.path), which is missing (collected or damaged); nothing changed"
            )
        }
        let sources = try waitFor { try await pyramid.data("generations/\(g).sources.json") }.flatMap {
            try? JSONDecoder().decode(GenerationSources.self, from: Data($0.bytes.readableBytesView))
        }
        target.generation = now + 1
        target.restores = target.restores ?? g
        target.created = ISO8601DateFormatter().string(from: Date())
        let switched = target
        try waitFor { try await pyramid.commit(switched, sources: sources) }
        // The area really tiled is the restored generation's: traced from the coarse levels of its
        // shards, fetched into the staging folder, as the tiler traces it after a build.
        do {
            try traceFootprint(of: target, threads: threads)
        } catch {
            throw GenerationError(
                "\(url): generation \(now + 1) (generation \(g)'s shards) is current, but its footprint.json could not be traced again (\(error)); coverage progress shows the previous one until the next build"
            )
        }
        return target
    }

    /// Traces the footprint of `manifest` from its shards' prefixes and uploads it.
    func traceFootprint(of manifest: PyramidManifest, threads: Int) throws {
        let publisher = BucketPublisher(pyramid: pyramid, staging: staging)
        publisher.cleanUp()
        defer { publisher.cleanUp() }
        try manifest.save(directory: staging.directory)
        let level = TiledFootprint.level(
            levels: manifest.levels, minZoom: manifest.minZoom, maxZoom: manifest.maxZoom,
            tileSize: manifest.tileSize)
        if let band = manifest.shardScheme.band(containing: level) {
            try publisher.fetchPrefixes(
                manifest.shards.filter { $0.z == band.top }.map(\.path), keep: band.deepest - level, threads: threads)
        }
        try TiledFootprint.record(try PyramidReader(directory: staging.directory), directory: staging.directory)
        try publisher.publishFootprint()
    }

    /// Deletes the shard objects and generation records no kept generation needs, by the folder's
    /// rule (`PyramidFolder.collect`): one listing of `shards/` gives every shard's size and date
    /// (`LastModified`, for the grace period of unlisted ones). Refused, deleting nothing, when a
    /// kept generation cannot be read or misses a shard.
    public func collect(keep: Int, grace: TimeInterval, dryRun: Bool, now: Date = Date()) throws
        -> CollectionReport
    {
        guard keep >= 1 else {
            throw GenerationError("--keep must be at least 1: the current generation is always kept")
        }
        let lock = try FileLock.build(staging, doing: "gc")
        defer { withExtendedLifetime(lock) {} }
        let pyramid = self.pyramid
        guard let current = try waitFor({ try await pyramid.current()?.manifest }),
            let currentGeneration = current.generation
        else { throw GenerationError("\(pyramid.url) has no pyramid.json: nothing to collect") }
        let all = try waitFor { try await pyramid.generations() }
        var manifests: [Int: Result<PyramidManifest, any Error>] = [:]
        for g in all where g <= currentGeneration {
            manifests[g] = Result {
                let m = try waitFor { try await pyramid.manifest(generation: g) }
                try PyramidFolder.checkFormat(m, in: pyramid.url)
                return m
            }
        }
        let start = pyramid.key("").count
        let listed = try waitFor { try await pyramid.bucket.list(prefix: pyramid.key("shards/")) }
        let files = listed.filter { $0.key.hasSuffix(".tif") }.map {
            StoredShardFile(
                path: String($0.key.dropFirst(start)), size: $0.size,
                modified: Self.date($0.lastModified) ?? now)
        }
        let sizes = Dictionary(files.map { ($0.path, $0.size) }, uniquingKeysWith: { a, _ in a })
        let report = try PyramidFolder.collection(
            of: pyramid.url, keep: keep, current: currentGeneration, generations: all, manifests: manifests,
            files: files, missing: { m in m.shards.filter { sizes[$0.path] != $0.bytes }.map(\.path) },
            grace: grace, now: now)
        if !dryRun {
            // Shards first, then the records of the dropped generations, as in a folder.
            try Self.delete(report.deletedFiles.map { pyramid.key($0) }, from: pyramid.bucket)
            try Self.delete(
                report.dropped.flatMap {
                    [pyramid.key("generations/\($0).json"), pyramid.key("generations/\($0).sources.json")]
                }, from: pyramid.bucket)
        }
        return report
    }

    /// Deletes `keys`, 16 at a time.
    static func delete(_ keys: [String], from bucket: S3Bucket) throws {
        try waitFor {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (i, key) in keys.enumerated() {
                    if i >= 16 { try await group.next() }
                    group.addTask { try await bucket.delete(key) }
                }
                try await group.waitForAll()
            }
        }
    }

    /// `LastModified` of a listing (ISO 8601, with or without fractions of a second).
    static func date(_ text: String) -> Date? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: text) { return d }
        f.formatOptions = [.withInternetDateTime]
        return f.date(from: text)
    }
}
