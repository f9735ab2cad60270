import Foundation
import GeoGrid
import NIOCore
import S3

/// One pyramid in object storage (`s3://bucket/prefix/<tileset>/<grid>/`), with the layout of a
/// pyramid folder: each object's key is the prefix and the file's path relative to the folder
/// (`pyramid.json`, `generations/3.json`, `done/15/428/3015.json`, `shards/15/428/3015.g3.tif`).
/// What `PyramidFolder` does with renames and `flock`, this does with S3's atomic PUTs and
/// conditional writes: a single PUT or a completed multipart upload makes an object appear whole
/// or not at all, and `pyramid.json` is replaced only over the ETag of the generation it follows.
public struct BucketPyramid: Sendable {
    /// The bucket holding the store.
    public let bucket: S3Bucket
    /// The pyramid's key prefix, without a trailing `/` (`store/demo/2154_5cm`).
    public let prefix: String

    /// The pyramid `tileset`/`grid` of the store at `storePrefix` (empty for the bucket's root).
    public init(bucket: S3Bucket, storePrefix: String, tileset: String, grid: String) {
        self.bucket = bucket
        self.prefix = storePrefix.isEmpty ? "\(tileset)/\(grid)" : "\(storePrefix)/\(tileset)/\(grid)"
    }

    /// The pyramid at a key prefix (`prefix` without a trailing `/`).
    public init(bucket: S3Bucket, prefix: String) {
        self.bucket = bucket
        self.prefix = prefix
    }

    /// The key of a file of the pyramid folder (`shards/15/428/3015.g3.tif`).
    public func key(_ relative: String) -> String { prefix.isEmpty ? relative : "\(prefix)/\(relative)" }

    /// The pyramid as a user names it, for messages.
    public var url: String { "s3://\(bucket.name)/\(prefix)" }

    /// A small object's bytes (a manifest, a record), nil when there is none.
    public func data(_ relative: String) async throws(S3Error) -> S3Object? {
        do {
            return try await bucket.get(key(relative))
        } catch  where error.kind == .notFound {
            return nil
        }
    }

    /// The current manifest and the ETag of its object, nil when the pyramid has none yet. Throws
    /// `GenerationError` for a manifest this version cannot build on (as a folder's).
    public func current() async throws -> (manifest: PyramidManifest, etag: String)? {
        guard let object = try await data(PyramidManifest.fileName) else { return nil }
        let m = try Self.decode(PyramidManifest.self, object, url: "\(url)/\(PyramidManifest.fileName)")
        try PyramidFolder.checkFormat(m, in: url)
        return (m, object.etag)
    }

    /// The manifest of kept generation `g`.
    public func manifest(generation g: Int) async throws -> PyramidManifest {
        guard let object = try await data("generations/\(g).json") else {
            throw GenerationError("generation \(g) of \(url) is not kept (collected or never built)")
        }
        return try Self.decode(PyramidManifest.self, object, url: "\(url)/generations/\(g).json")
    }

    /// The generations kept under `generations/`, oldest first.
    public func generations() async throws(S3Error) -> [Int] {
        try await bucket.list(prefix: key("generations/")).compactMap { o -> Int? in
            let name = o.key.split(separator: "/").last.map(String.init) ?? ""
            guard name.hasSuffix(".json"), !name.hasSuffix(".sources.json") else { return nil }
            return Int(name.dropLast(5))
        }.sorted()
    }

    /// Every object under `shards/` with its size, by path relative to the pyramid: one listing
    /// instead of a HEAD per shard (a region has tens of thousands).
    public func shardSizes() async throws(S3Error) -> [String: Int] {
        var out: [String: Int] = [:]
        let start = key("").count
        for o in try await bucket.list(prefix: key("shards/")) {
            out[String(o.key.dropFirst(start))] = o.size
        }
        return out
    }

    /// Every shard record under `done/`, whatever its plan; a record that cannot be read is left
    /// out (its shard is built again), as in a folder. Fetched a few at a time; with `only`, just
    /// the records of those shards (a cluster worker needs its share's, not every worker's).
    public func records(only: Set<TileCoordinate>? = nil) async throws -> [TileCoordinate: ShardRecord] {
        let start = key("done/").count
        let found: [(TileCoordinate, String)] = try await bucket.list(prefix: key("done/")).compactMap { o in
            let parts = o.key.dropFirst(start).split(separator: "/")
            guard parts.count == 3, parts[2].hasSuffix(".json"), let z = Int(parts[0]), let c = Int(parts[1]),
                let r = Int(parts[2].dropLast(5))
            else { return nil }
            let shard = TileCoordinate(z: z, col: c, row: r)
            return only?.contains(shard) == false ? nil : (shard, o.key)
        }
        var out: [TileCoordinate: ShardRecord] = [:]
        try await withThrowingTaskGroup(of: (TileCoordinate, ShardRecord?).self) { group in
            var next = 0
            func add() {
                guard next < found.count else { return }
                let (shard, key) = found[next]
                next += 1
                group.addTask {
                    let object: S3Object
                    do {
                        object = try await bucket.get(key)
                    } catch let e as S3Error where e.kind == .notFound {
                        return (shard, nil)
                    }
                    return (
                        shard, try? JSONDecoder().decode(ShardRecord.self, from: Data(object.bytes.readableBytesView))
                    )
                }
            }
            for _ in 0..<16 { add() }
            while let (shard, record) = try await group.next() {
                if let record { out[shard] = record }
                add()
            }
        }
        return out
    }

    /// Where a shard's record lives, relative to the pyramid.
    public static func recordPath(_ shard: TileCoordinate) -> String {
        "done/\(shard.z)/\(shard.col)/\(shard.row).json"
    }

    /// Records a finished shard: one PUT, so the record is whole or absent.
    public func record(_ record: ShardRecord, for shard: TileCoordinate) async throws {
        try await bucket.put(
            key(Self.recordPath(shard)), ByteBuffer(bytes: try PyramidFolder.encode(record, pretty: false)),
            contentType: "application/json")
    }

    /// Deletes the records of a build (its generation is current, or a new build starts afresh),
    /// 16 at a time: a region's build leaves tens of thousands.
    public func clearRecords() async throws {
        let keys = try await bucket.list(prefix: key("done/")).map(\.key)
        let bucket = self.bucket
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (i, key) in keys.enumerated() {
                if i >= 16 { try await group.next() }
                group.addTask { try await bucket.delete(key) }
            }
            try await group.waitForAll()
        }
    }

    /// Makes `manifest` current if the current generation is still `manifest.generation − 1` (none
    /// for generation 1): writes `generations/<g>.sources.json` and `generations/<g>.json`, then
    /// `pyramid.json` last, with a conditional PUT — `If-None-Match: *` when there is none yet,
    /// `If-Match` with the ETag of the manifest just read otherwise — so of two builds that raced,
    /// the second to switch is refused (`GenerationError`) and nothing it made is current.
    public func commit(_ manifest: PyramidManifest, sources: GenerationSources?) async throws {
        try await commit(manifest, sources: sources, over: try await current())
    }

    /// `commit` over `before`, the current manifest as this build read it (a test passes one read
    /// earlier, as a build racing another would have).
    package func commit(
        _ manifest: PyramidManifest, sources: GenerationSources?,
        over before: (manifest: PyramidManifest, etag: String)?
    ) async throws {
        guard let g = manifest.generation, g >= 1 else {
            throw GenerationError("a manifest to commit needs a generation")
        }
        let now = before?.manifest.generation ?? 0
        guard now == g - 1 else { throw Self.raced(url, now: now, g: g) }
        if let sources {
            try await bucket.put(
                key("generations/\(g).sources.json"),
                ByteBuffer(bytes: try PyramidFolder.encode(sources, pretty: false)),
                contentType: "application/json")
        }
        let data = ByteBuffer(bytes: try PyramidFolder.encode(manifest, pretty: true))
        try await bucket.put(key("generations/\(g).json"), data, contentType: "application/json")
        let switched = try await putManifest(data, over: before?.etag)
        if !switched {
            let object = try await self.data(PyramidManifest.fileName)
            let later =
                try object.map { try Self.decode(PyramidManifest.self, $0, url: "\(url)/\(PyramidManifest.fileName)") }?
                .generation ?? now
            if let object, later == g {
                // Another build made this generation first (a second finisher of the same plan):
                // this one's record, written before it lost the switch, may have landed after the
                // winner's; the record goes back to the manifest that was made current. Written
                // after this build's failed switch, so after every record write of the race.
                try await bucket.put(key("generations/\(g).json"), object.bytes, contentType: "application/json")
            }
            throw Self.raced(url, now: later, g: g)
        }
    }

    /// Writes `pyramid.json` only over the object with ETag `etag` (only where none is, when nil);
    /// false when the store refused because it changed.
    private func putManifest(_ data: ByteBuffer, over etag: String?) async throws -> Bool {
        do {
            if let etag {
                try await bucket.put(
                    key(PyramidManifest.fileName), data, ifMatch: etag, contentType: "application/json")
            } else {
                try await bucket.put(
                    key(PyramidManifest.fileName), data, ifNoneMatch: "*", contentType: "application/json")
            }
            return true
        } catch let e as S3Error where e.kind == .preconditionFailed {
            return false
        }
    }

    static func raced(_ url: String, now: Int, g: Int) -> GenerationError {
        GenerationError(
            "\(url) moved to generation \(now) while this build made generation \(g) from \(g - 1): another build of the same tileset switched first; nothing of this build was made current (its shards stay until `dallage gc`)"
        )
    }

    static func decode<T: Decodable>(_ type: T.Type, _ object: S3Object, url: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(object.bytes.readableBytesView))
        } catch {
            throw GenerationError("\(url) cannot be read: \(error)")
        }
    }
}
