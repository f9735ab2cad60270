import Foundation
import GeoGrid
import Logging
import NIOCore
import S3
import Synchronization

/// A store in an S3-compatible bucket, under a key prefix, laid out as a folder store is
/// (`<prefix>/<tileset>/<grid>/pyramid.json`, the shards its manifest lists, `footprint.json`).
///
/// Listing walks the prefix one level at a time (tilesets, then grids) and reads each
/// `pyramid.json`'s entry, never the shards: a bucket holds millions of shard keys. A pyramid is
/// opened with one GET of its manifest. Its tiles are read through ``S3PyramidSource``: each
/// shard's index fetched once (one ranged GET of its head) and kept in a cache shared by every
/// pyramid of the store, bounded in bytes; then one ranged GET per tile. Concurrent reads of one
/// index, or of one tile, share one GET.
public final class S3Store: PyramidStore {
    public let location: String
    /// The bucket, through the process's one client.
    public let bucket: S3Bucket
    /// The key prefix, without leading or trailing `/` (empty for the bucket's root).
    public let prefix: String
    /// How much is cached, and how failures are retried.
    public let settings: S3StoreSettings
    /// What was fetched from the bucket: requests and bytes.
    public let counters = S3ReadCounters()
    let logger: Logger
    /// Shard indexes by object key: a shard is never rewritten under its key, so an index stays
    /// true for as long as the object exists, across generations and rescans.
    let indexes: ByteLRU<String, ShardIndex>
    let indexLoads = InFlight<String, ShardIndex>()
    let tileLoads = InFlight<String, ByteBuffer>()
    /// Tile bytes on local disk (`tile_disk_cache`), nil without one.
    public let diskCache: TileDiskCache?

    /// A store in `bucket` under `prefix` (as ``StoreLocation`` parses it).
    public init(
        bucket: S3Bucket, prefix: String, settings: S3StoreSettings = S3StoreSettings(),
        logger: Logger = Logger(label: "dallage.s3store")
    ) {
        self.bucket = bucket
        self.prefix = prefix
        self.settings = settings
        self.logger = logger
        location = StoreLocation.s3(bucket: bucket.name, prefix: prefix).description
        indexes = ByteLRU(capacity: settings.indexCacheBytes)
        diskCache = settings.diskCache
    }

    /// The key of a path relative to the store.
    public func key(_ relative: String) -> String { prefix.isEmpty ? relative : "\(prefix)/\(relative)" }

    /// `s3://bucket/key` of a path relative to the store, for messages.
    func url(_ relative: String) -> String { "s3://\(bucket.name)/\(key(relative))" }

    // MARK: - Start

    /// Checks that the bucket answers with these credentials: one listing of at most one key.
    /// Wrong credentials, a missing bucket or an unreachable endpoint throw the client's one-line
    /// `S3Error`, within the client's connect timeout.
    public func check() async throws(S3Error) {
        _ = try await bucket.listPage(prefix: key(""), delimiter: "/", maxKeys: 1)
    }

    // MARK: - Listing

    public func list() throws -> [PyramidListing] {
        try ObjectStoreIO.wait { () async throws(S3Error) -> [PyramidListing] in try await self.listing() }
    }

    /// The pyramids under the prefix: tilesets, then their grids, then each grid's
    /// `pyramid.json` (its ETag and date make the stamp, so a rebuilt pyramid is seen).
    public func listing() async throws(S3Error) -> [PyramidListing] {
        let root = key("")
        let tilesets = try await folders(under: root)
        do {
            return try await withThrowingTaskGroup(of: [PyramidListing].self) { group in
                for tilesetPrefix in tilesets {
                    let tileset = String(tilesetPrefix.dropFirst(root.count).dropLast())
                    guard !tileset.hasPrefix(".") else { continue }
                    group.addTask {
                        var found: [PyramidListing] = []
                        for gridPrefix in try await self.folders(under: tilesetPrefix) {
                            let grid = String(gridPrefix.dropFirst(tilesetPrefix.count).dropLast())
                            guard !grid.hasPrefix(".") else { continue }
                            let manifestKey = gridPrefix + PyramidManifest.fileName
                            let page = try await self.bucket.listPage(prefix: manifestKey, maxKeys: 1)
                            guard let object = page.objects.first, object.key == manifestKey else { continue }
                            found.append(
                                PyramidListing(tileset: tileset, grid: grid, stamp: Self.stamp(object)))
                        }
                        return found
                    }
                }
                var all: [PyramidListing] = []
                for try await part in group { all += part }
                return all.sorted { ($0.tileset, $0.grid) < ($1.tileset, $1.grid) }
            }
        } catch let e as S3Error {
            throw e
        } catch {
            throw S3Error(kind: .other, operation: "ListObjectsV2", resource: url(""), message: "\(error)")
        }
    }

    /// The "folders" right under a key prefix ending in `/` (or empty): the common prefixes of a
    /// delimited listing, page after page.
    private func folders(under keyPrefix: String) async throws(S3Error) -> [String] {
        var out: [String] = []
        var token: String?
        var pages = 0
        repeat {
            let page = try await bucket.listPage(prefix: keyPrefix, delimiter: "/", continuationToken: token)
            out += page.commonPrefixes
            token = page.continuationToken
            pages += 1
        } while token != nil && pages < 10_000
        return out
    }

    /// A number that changes when the object does: FNV-1a of its ETag, date and size, as a
    /// Double that holds it exactly (52 bits).
    static func stamp(_ object: S3ObjectSummary) -> Double {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "\(object.etag)|\(object.lastModified)|\(object.size)".utf8 {
            h = (h ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        return Double(h >> 12)
    }

    // MARK: - Opening

    public func open(_ pyramid: PyramidListing, openShards: Int) throws -> any PyramidSource {
        try ObjectStoreIO.wait { () async throws -> S3PyramidSource in try await self.openSource(pyramid) }
    }

    /// Reads a pyramid's manifest (one GET) and makes its source.
    public func openSource(_ pyramid: PyramidListing) async throws -> S3PyramidSource {
        let directory = "\(pyramid.tileset)/\(pyramid.grid)"
        let object = try await bucket.get(key("\(directory)/\(PyramidManifest.fileName)"))
        let manifest = try JSONDecoder().decode(PyramidManifest.self, from: Data(object.bytes.readableBytesView))
        return S3PyramidSource(manifest: manifest, store: self, directory: directory)
    }

    // MARK: - Small files

    public func read(_ relative: String) throws -> Data? {
        try ObjectStoreIO.wait { () async throws(S3Error) -> Data? in try await self.object(relative) }
    }

    /// A small object of the store (a manifest, a footprint, a source index), nil when absent.
    public func object(_ relative: String) async throws(S3Error) -> Data? {
        do {
            let object = try await bucket.get(key(relative))
            counters.add(get: object.bytes.readableBytes)
            return Data(object.bytes.readableBytesView)
        } catch  where error.kind == .notFound {
            return nil
        }
    }
}

/// What an ``S3Store`` keeps, and how long a broken shard rests.
public struct S3StoreSettings: Sendable {
    /// Bytes of shard indexes kept in memory (a band of 8 levels with masks: about 350 kB each).
    public var indexCacheBytes = Self.defaultIndexCacheBytes
    /// How long a shard that could not be read (gone, corrupt) answers its error again without
    /// asking the store.
    public var failedShardRetry: Duration = Self.defaultFailedShardRetry
    /// How long a tiled footprint read from the bucket is used before it is read again.
    public var footprintTTL: Duration = .seconds(30)
    /// Tile bytes kept on local disk, nil for none.
    public var diskCache: TileDiskCache?

    /// 256 MiB: the indexes of about 750 full shards.
    public static let defaultIndexCacheBytes = 256 << 20
    /// 30 s: a repaired shard is served again soon, a broken one costs a GET per 30 s.
    public static let defaultFailedShardRetry: Duration = .seconds(30)

    /// The defaults.
    public init() {}
}

/// Requests an ``S3Store`` made and bytes it fetched: how many GETs a cold tile costs.
public final class S3ReadCounters: Sendable {
    private let getCount = Atomic<Int>(0)
    private let indexGetCount = Atomic<Int>(0)
    private let tileGetCount = Atomic<Int>(0)
    private let byteCount = Atomic<Int>(0)

    /// GETs of any object of the store (shard heads, tiles, masks, small files).
    public var gets: Int { getCount.load(ordering: .relaxed) }
    /// Ranged GETs of shard heads (indexes).
    public var indexGets: Int { indexGetCount.load(ordering: .relaxed) }
    /// Ranged GETs of tiles (and masks) once the index was known.
    public var tileGets: Int { tileGetCount.load(ordering: .relaxed) }
    /// Bytes received.
    public var bytes: Int { byteCount.load(ordering: .relaxed) }

    func add(get bytes: Int, index: Bool = false, tile: Bool = false) {
        getCount.add(1, ordering: .relaxed)
        byteCount.add(bytes, ordering: .relaxed)
        if index { indexGetCount.add(1, ordering: .relaxed) }
        if tile { tileGetCount.add(1, ordering: .relaxed) }
    }
}

/// Work under way by key, so that callers asking for the same thing at once share one run: the
/// first starts it (on ``ObjectStoreIO/executor``), the others await the same task. A run that
/// ends is forgotten; what it fetched is kept by the caches, not here.
final class InFlight<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private let tasks = Mutex<[Key: Task<Value, any Error>]>([:])

    /// The value of `body` for `key`, run once for every caller asking while it runs.
    func run(_ key: Key, _ body: @escaping @Sendable () async throws -> Value) async throws -> Value {
        let task = tasks.withLock { running in
            if let task = running[key] { return task }
            let task = ObjectStoreIO.start { () async throws -> Value in
                defer { self.tasks.withLock { _ = $0.removeValue(forKey: key) } }
                return try await body()
            }
            running[key] = task
            return task
        }
        return try await task.value
    }

    /// Runs under way.
    var count: Int { tasks.withLock { $0.count } }
}
