import Foundation
import GeoGrid
import Logging
import NIOCore
import Pyramid
import S3
import Synchronization

/// A store the tiler cannot write to, or a staging file it cannot handle, in one line.
public struct StoreTargetError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) { self.description = description }
}

/// Where a build into object storage (`--store s3://bucket/prefix`) stands: the bucket, the client
/// and the local staging folder the shards are built in before they are uploaded.
final class BucketTarget: Sendable {
    let client: S3Client
    let bucket: S3Bucket
    /// The store's key prefix (no trailing `/`).
    let prefix: String
    let url: String
    /// The local folder mirroring the store's layout while building.
    let staging: String
    /// The folder of this run's own staging (`dallage-staging/.<private>`), nil when it shares
    /// `dallage-staging/<bucket>/…` with the other builds of this host.
    let privateStaging: String?
    /// The endpoint the store is reached at (`https://s3.eu-west-3.amazonaws.com`).
    let endpoint: String

    /// Connects to the store named by `location` with the AWS environment, and checks at once that
    /// the endpoint answers, the credentials are accepted and the bucket exists (one listing of at
    /// most one key), so a wrong setting is one line before any work, not a failure at the first
    /// upload. A cluster worker names a `privateFolder` of the staging root to build in: workers
    /// sharing a host (and its TMPDIR) must not empty each other's shards.
    init(
        bucket name: String, prefix: String, staging root: String, privateFolder: String? = nil,
        environment: [String: String]
    ) throws {
        url = prefix.isEmpty ? "s3://\(name)" : "s3://\(name)/\(prefix)"
        let configuration: S3Configuration
        do {
            configuration = try S3Configuration(environment: environment)
        } catch {
            throw StoreTargetError("store \(url): \(error)")
        }
        do {
            client = try S3Client(configuration: configuration)
        } catch {
            throw StoreTargetError("store \(url): \(error)")
        }
        endpoint = configuration.endpoint.description
        bucket = client.bucket(name)
        self.prefix = prefix
        // Bucket names never start with a dot: a private folder cannot be a bucket's.
        privateStaging = privateFolder.map { (root as NSString).appendingPathComponent("dallage-staging/.\($0)") }
        staging = ((privateStaging ?? (root as NSString).appendingPathComponent("dallage-staging")) as NSString)
            .appendingPathComponent("\(name)/\(prefix)")
        let bucket = self.bucket
        do {
            _ = try waitFor { try await bucket.listPage(prefix: prefix.isEmpty ? "" : prefix + "/", maxKeys: 1) }
        } catch {
            shutdown()
            throw StoreTargetError("store \(url) cannot be used: \(Self.explain(error))")
        }
    }

    /// What to do about a failed first contact, beside what S3 said.
    static func explain(_ error: any Error) -> String {
        guard let e = error as? S3Error else { return "\(error)" }
        switch e.kind {
        case .noSuchBucket: return "\(e) (create the bucket first)"
        case .invalidCredentials, .accessDenied:
            return "\(e) (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN)"
        case .unreachable, .timeout: return "\(e) (check AWS_ENDPOINT_URL)"
        default: return "\(e)"
        }
    }

    /// Closes the client's connections.
    func shutdown() {
        let client = self.client
        _ = try? waitFor { try await client.shutdown() }
    }

    /// One pyramid of the store.
    func pyramid(tileset: String, grid: String) -> BucketPyramid {
        BucketPyramid(bucket: bucket, storePrefix: prefix, tileset: tileset, grid: grid)
    }

    /// The layer and vintage of every pyramid's manifest in the store, by tileset (for the
    /// tiler's check that a layer or vintage clashes with none), read with delimited listings.
    func layers(except tileset: String) throws -> [String: (layer: String?, vintage: Vintage?)] {
        let bucket = self.bucket
        let root = prefix.isEmpty ? "" : prefix + "/"
        return try waitFor {
            var out: [String: (layer: String?, vintage: Vintage?)] = [:]
            for t in try await bucket.listPage(prefix: root, delimiter: "/").commonPrefixes {
                let id = String(t.dropFirst(root.count).dropLast())
                guard id != tileset, !id.hasPrefix(".") else { continue }
                for g in try await bucket.listPage(prefix: t, delimiter: "/").commonPrefixes {
                    let p = BucketPyramid(bucket: bucket, prefix: String(g.dropLast()))
                    guard let object = try await p.data(PyramidManifest.fileName),
                        let m = try? JSONDecoder().decode(
                            PyramidManifest.self, from: Data(object.bytes.readableBytesView))
                    else { continue }
                    out[id] = (m.layer, m.vintage)
                }
            }
            return out
        }
    }
}

/// One pyramid built in a staging folder and published to a bucket as it goes: the staging
/// folder is a `PyramidFolder` the build uses as it would a local store (so building, copying
/// from a previous generation and reading the band below are the same code), and this moves what
/// matters between it and the bucket:
///
/// - before the build, the current manifest, its generation's sources and (for `--resume`) the
///   shard records come down, and the shard objects are listed once (sizes);
/// - each finished shard, once flushed, goes up (one PUT, or a multipart upload above
///   `multipartThreshold`), then its record: a record in the bucket always names a whole object;
/// - the local copy is then cut to its header and coarse levels (what the band above and the
///   footprint read), so the staging folder does not grow with the pyramid;
/// - the previous versions of the shards a band rebuilds, and the coarse levels of the reused
///   shards the band above or the footprint read, are fetched just before they are needed;
/// - the switch is `BucketPyramid.commit`: `pyramid.json` last, with compare-and-swap.
final class BucketPublisher: Sendable {
    let pyramid: BucketPyramid
    let staging: PyramidFolder
    /// Objects under `shards/` and their sizes: listed at start, updated by each upload.
    private let sizes = Mutex<[String: Int]>([:])

    /// A shard up to 64 MiB is one PUT (one request, atomic, cheap to retry whole); a larger one a
    /// multipart upload of 64 MiB parts, read one part at a time, so an upload holds at most 64 MiB
    /// whatever the shard. A full deepest-level shard at 5 cm is 128×128 tiles of 10–20 kB
    /// (160–330 MB): 3 to 6 parts, each retried alone, far below S3's 10,000 parts and above its
    /// (and SeaweedFS's) 5 MiB minimum. Most shards of a real area are partial and smaller.
    static let multipartThreshold = 64 << 20

    init(pyramid: BucketPyramid, staging: PyramidFolder) {
        self.pyramid = pyramid
        self.staging = staging
    }

    /// Brings the pyramid's state into the staging folder, replacing what an earlier run left
    /// there: `pyramid.json`, the current generation's `generations/<g>.json` and
    /// `<g>.sources.json`, and with `records` the shard records of `done/` (with `only`, those of
    /// these shards; `keepingRecords` leaves those pulled before). Lists the shards.
    func pull(records: Bool, keepingRecords: Bool = false, only: Set<TileCoordinate>? = nil) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: staging.directory, withIntermediateDirectories: true)
        for stale in [PyramidManifest.fileName, "generations", "done", TiledFootprint.fileName]
        where !(keepingRecords && stale == "done") {
            try? fm.removeItem(atPath: staging.path(stale))
        }
        let pyramid = self.pyramid
        let listed = try waitFor { try await pyramid.shardSizes() }
        sizes.withLock { $0 = listed }
        if records {
            for (shard, record) in try waitFor({ try await pyramid.records(only: only) }) {
                try staging.record(record, for: shard)
            }
        }
        guard let manifest = try waitFor({ try await pyramid.data(PyramidManifest.fileName) }) else { return }
        let bytes = Data(manifest.bytes.readableBytesView)
        try bytes.write(to: URL(fileURLWithPath: staging.path(PyramidManifest.fileName)))
        // What the build compares its dalles with.
        if let g = try? JSONDecoder().decode(PyramidManifest.self, from: bytes).generation {
            try fm.createDirectory(atPath: staging.path("generations"), withIntermediateDirectories: true)
            try bytes.write(to: URL(fileURLWithPath: staging.path("generations/\(g).json")))
            if let sources = try waitFor({ try await pyramid.data("generations/\(g).sources.json") }) {
                try Data(sources.bytes.readableBytesView).write(
                    to: URL(fileURLWithPath: staging.path("generations/\(g).sources.json")))
            }
        }
    }

    /// The size of a shard object in the bucket, nil when there is none.
    func size(_ relative: String) -> Int? { sizes.withLock { $0[relative] } }

    /// Shards of `m` that are not in the bucket with their recorded size.
    func missingShards(of m: PyramidManifest) -> [String] {
        sizes.withLock { sizes in m.shards.filter { sizes[$0.path] != $0.bytes }.map(\.path) }
    }

    /// Uploads a finished, flushed shard of the staging folder to its key, then cuts the local copy
    /// to what is still read from it: its directories and its overviews from `keep` up (nil: the
    /// file is removed).
    func publish(_ relative: String, keep: Int?) throws {
        let file = staging.path(relative)
        let bucket = pyramid.bucket
        let key = pyramid.key(relative)
        _ = try waitFor { try await bucket.upload(file: file, to: key, partSize: Self.multipartThreshold) }
        let size = (try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? Int
        sizes.withLock { $0[relative] = size }
        if let keep {
            try Self.trim(file, keep: keep)
        } else {
            try FileManager.default.removeItem(atPath: file)
        }
    }

    /// Writes a shard record to the bucket (after its shard: a record always names a whole object).
    func record(_ record: ShardRecord, for shard: TileCoordinate) throws {
        let pyramid = self.pyramid
        try waitFor { try await pyramid.record(record, for: shard) }
    }

    /// Deletes the shard records of the bucket.
    func clearRecords() throws {
        let pyramid = self.pyramid
        try waitFor { try await pyramid.clearRecords() }
    }

    /// The bytes of a shard a reader of overviews `keep` and coarser needs: every directory, and the
    /// tiles and masks of those overviews (a COG stores the smallest overview's data first, so they
    /// are a prefix of the file).
    static func prefixLength(_ reader: ShardReader, keep: Int) -> Int {
        // The directories end where the first tile's data starts (overviews without a tile there,
        // the coarsest of a small area, give no end of their own).
        var end = 0
        var firstData = reader.fileSize
        for (o, image) in reader.images.enumerated() {
            for list in [image] + (o < reader.masks.count ? [reader.masks[o]] : []) {
                for (i, offset) in list.offsets.enumerated() where offset > 0 {
                    firstData = min(firstData, Int(offset))
                    if o >= keep { end = max(end, Int(offset) + Int(list.byteCounts[i])) }
                }
            }
        }
        return min(reader.fileSize, max(end, firstData))
    }

    /// Cuts a local shard to its prefix for overviews `keep` and coarser: the prefix is written to
    /// a new file renamed over the shard, since a worker of the band above may have the shard open
    /// (it keeps reading the whole file it opened; cut in place, its reads would fall short).
    static func trim(_ file: String, keep: Int) throws {
        let reader = try ShardReader(path: file)
        var bytes = [UInt8](repeating: 0, count: prefixLength(reader, keep: keep))
        try bytes.withUnsafeMutableBytes { try reader.read(at: 0, into: $0) }
        let tmp = (file as NSString).deletingLastPathComponent + "/.\((file as NSString).lastPathComponent).trim.tmp"
        try Data(bytes).write(to: URL(fileURLWithPath: tmp))
        guard rename(tmp, file) == 0 else {
            unlink(tmp)
            throw StoreTargetError("cannot trim \(file): \(String(cString: strerror(errno)))")
        }
    }

    /// Fetches a whole shard object into the staging folder (the previous version of a shard being
    /// rebuilt, whose unchanged tiles are copied from it), in 16 MiB ranged reads.
    func fetch(_ relative: String) throws {
        let file = staging.path(relative)
        let tmp = try temporary(for: file)
        let bucket = pyramid.bucket
        let key = pyramid.key(relative)
        do {
            _ = try waitFor { try await bucket.download(key, to: tmp) }
        } catch {
            unlink(tmp)
            throw error
        }
        guard rename(tmp, file) == 0 else { throw StoreTargetError("cannot write \(file)") }
    }

    /// Fetches the prefix of a shard object a reader of overviews `keep` and coarser needs (its
    /// directories, then those tiles): 1 MiB first, which holds the directories of a full shard of
    /// 8 levels (about 0.7 MB) and its coarsest tiles, more only when the parse or the tiles ask.
    func fetchPrefix(_ relative: String, keep: Int) throws {
        let file = staging.path(relative)
        let tmp = try temporary(for: file)
        defer { unlink(tmp) }
        let bucket = pyramid.bucket
        let key = pyramid.key(relative)
        var limit = 1 << 20
        while true {
            let asked = limit
            let (size, _) = try waitFor { try await bucket.download(key, to: tmp, limit: asked) }
            let got = min(asked, size)
            if let reader = try? ShardReader(path: tmp) {
                let end = Self.prefixLength(reader, keep: keep)
                if end <= got {
                    guard truncate(tmp, off_t(end)) == 0, rename(tmp, file) == 0 else {
                        throw StoreTargetError("cannot write \(file)")
                    }
                    return
                }
                limit = end
            } else if got >= size {
                throw StoreTargetError("\(pyramid.url)/\(relative) is not a readable shard")
            } else {
                limit = min(size, limit * 4)
            }
        }
    }

    /// Fetches, a few at a time, the prefixes of the shards not in the staging folder.
    func fetchPrefixes(_ relatives: [String], keep: Int, threads: Int) throws {
        let missing = relatives.filter { !FileManager.default.fileExists(atPath: staging.path($0)) }
        guard !missing.isEmpty else { return }
        let failure = Mutex<(any Error)?>(nil)
        let counter = Counter()
        DispatchQueue.concurrentPerform(iterations: max(1, min(8, threads * 2, missing.count))) { _ in
            while true {
                let i = counter.next()
                if i >= missing.count { break }
                do { try fetchPrefix(missing[i], keep: keep) } catch {
                    failure.withLock { if $0 == nil { $0 = error } }
                }
            }
        }
        if let error = failure.withLock({ $0 }) { throw error }
    }

    /// Before a band is built: the previous versions of the shards it rebuilds (whole: their
    /// unchanged tiles are copied), and the coarse levels of the shards of the band below that
    /// its rebuilt shards read and that this run did not build (reused, or finished before a
    /// `--resume`). The staging folder holds a band's previous shards only while it is built.
    func prepare(
        band: ShardScheme.Band, below: ShardScheme.Band?, todo: [TileCoordinate], previous: [String],
        belowShards: [TileCoordinate: String], keepBelow: Int, threads: Int
    ) throws {
        for p in previous where size(p) != nil { try fetch(p) }
        guard let below, !todo.isEmpty else { return }
        let rebuilt = Set(todo)
        let up = below.top - band.top
        let needed = belowShards.filter { rebuilt.contains($0.key.ancestor(levels: up)) }.map(\.value)
        try fetchPrefixes(needed.sorted(), keep: keepBelow, threads: threads)
    }

    /// Removes the previous versions fetched for a band once it is built.
    func dropPrevious(_ previous: [String]) {
        for p in previous { try? FileManager.default.removeItem(atPath: staging.path(p)) }
    }

    /// Makes the new generation current in the bucket (compare-and-swap), and keeps its manifest
    /// in the staging folder for the footprint's trace.
    func commit(_ manifest: PyramidManifest, sources: GenerationSources?) throws {
        let pyramid = self.pyramid
        try waitFor { try await pyramid.commit(manifest, sources: sources) }
        try manifest.save(directory: staging.directory)
    }

    /// The bucket's current manifest, read now; nil when there is none.
    func current() throws -> PyramidManifest? {
        let pyramid = self.pyramid
        return try waitFor { try await pyramid.current()?.manifest }
    }

    /// Uploads the footprint traced in the staging folder.
    func publishFootprint() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: staging.path(TiledFootprint.fileName)))
        let bucket = pyramid.bucket
        let key = pyramid.key(TiledFootprint.fileName)
        try waitFor { try await bucket.put(key, ByteBuffer(bytes: data), contentType: "application/json") }
    }

    /// Empties the staging folder of a finished build (its lock stays).
    func cleanUp() {
        for name in ["shards", "done", "generations", PyramidManifest.fileName, TiledFootprint.fileName] {
            try? FileManager.default.removeItem(atPath: staging.path(name))
        }
    }

    private func temporary(for file: String) throws -> String {
        let dir = (file as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return (dir as NSString).appendingPathComponent(".\((file as NSString).lastPathComponent).\(getpid()).tmp")
    }
}
