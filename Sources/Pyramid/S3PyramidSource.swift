import Foundation
import GeoGrid
import NIOCore
import Raster
import S3
import Synchronization

/// Where every tile and mask of one shard lies: its directories as the shard's head holds them,
/// fetched once and kept (``S3Store``'s index cache).
struct ShardIndex: Sendable {
    var images: [ShardReader.Image]
    var masks: [ShardReader.Image]
    /// The object's size when its head was read.
    var objectSize: Int

    /// Memory it takes, for the cache's budget.
    var cost: Int {
        (images + masks).reduce(256) { $0 + 16 * $1.offsets.count + 128 }
    }

    func tileRange(_ loc: ShardLocation, path: String) throws -> (offset: UInt64, count: Int)? {
        guard images.indices.contains(loc.overview) else { return nil }
        return try images[loc.overview].range(col: loc.col, row: loc.row, fileSize: objectSize, path: path)
    }

    func maskRange(_ loc: ShardLocation, path: String) throws -> (offset: UInt64, count: Int)? {
        guard masks.indices.contains(loc.overview) else { return nil }
        return try masks[loc.overview].range(col: loc.col, row: loc.row, fileSize: objectSize, path: path)
    }
}

/// One pyramid of an ``S3Store``. A stored tile is one ranged GET once its shard's index is known
/// (the first tile of a shard costs one more, for the index); the read is handed back as
/// `.later`, so no thread waits on it. What may block (`decodeTile`, `withTileAndMask`, `cover`,
/// `tiledFootprint`: WMS, extracts, transcoding) waits through ``ObjectStoreIO/wait(_:)``.
///
/// Tile validators are the folder store's (the shard's checksum from the manifest with the tile's
/// place and size), so a pyramid copied between a folder and a bucket keeps its ETags. A shard
/// that is gone or corrupt fails its own tiles only: the error is reported once (later ones are
/// marked `repeated`) and the shard is not asked again before ``S3StoreSettings/failedShardRetry``.
public final class S3PyramidSource: PyramidSource {
    public let manifest: PyramidManifest
    let store: S3Store
    /// The pyramid's path in the store: `<tileset>/<grid>`.
    let directory: String
    private let shards: [TileCoordinate: PyramidManifest.Shard]

    private struct Failure {
        var error: ShardError
        var at: ContinuousClock.Instant
    }
    private let failures = Mutex<[TileCoordinate: Failure]>([:])
    /// When a passing failure (timeout, 5xx, no connection) was last reported: the next ones
    /// within a few seconds are marked `repeated`, so an outage is not logged once per request.
    private let lastTransient = Mutex<ContinuousClock.Instant?>(nil)
    private let footprint = Mutex<(value: Geometry?, read: ContinuousClock.Instant)?>(nil)

    init(manifest: PyramidManifest, store: S3Store, directory: String) {
        self.manifest = manifest
        self.store = store
        self.directory = directory
        shards = Dictionary(manifest.shards.map { ($0.coordinate, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// The shard holding `tile` and the tile's place in it; nil when the pyramid has no shard there.
    private func locate(_ tile: TileCoordinate) -> (ShardLocation, PyramidManifest.Shard)? {
        guard let loc = manifest.shardScheme.locate(tile), let shard = shards[loc.shard] else { return nil }
        return (loc, shard)
    }

    /// The object key of a shard.
    func key(of shard: PyramidManifest.Shard) -> String { store.key("\(directory)/\(shard.path)") }

    /// `s3://bucket/key` of a shard, as errors name it.
    func url(of shard: PyramidManifest.Shard) -> String { "s3://\(store.bucket.name)/\(key(of: shard))" }

    private func etag(_ shard: PyramidManifest.Shard, _ loc: ShardLocation, count: Int) -> String {
        "\"\(shard.crc32)-\(loc.overview)-\(loc.col)-\(loc.row)-\(count)\""
    }

    /// Every read goes over the network.
    public var answersLater: Bool { true }

    // MARK: - Stored tiles, without blocking

    public func storedTile<Bytes: Sendable>(_ tile: TileCoordinate, into allocate: @escaping TileAllocator<Bytes>)
        -> TileRead<Bytes>
    {
        guard let (loc, shard) = locate(tile) else { return .ready(.success(nil)) }
        // With the index at hand, an absent tile, or one on the local disk cache, answers now.
        if let index = store.indexes.get(key(of: shard)) {
            do {
                guard let range = try index.tileRange(loc, path: url(of: shard)) else { return .ready(.success(nil)) }
                if let disk = store.diskCache,
                    let bytes = disk.read(
                        TileDiskCache.Key(object: key(of: shard), offset: range.offset, count: range.count),
                        into: allocate)
                {
                    return .ready(.success(StoredBytes(bytes: bytes, etag: etag(shard, loc, count: range.count))))
                }
            } catch let e as ShardError {
                return .ready(.failure(failed(shard, e)))
            } catch {
                return .ready(.failure(ShardError(path: url(of: shard), reason: "\(error)")))
            }
        }
        return .later { () async throws(ShardError) -> StoredBytes<Bytes>? in
            guard let (bytes, range) = try await self.tileBytes(loc, shard) else { return nil }
            do {
                let copied = try allocate(bytes.readableBytes) { target in
                    bytes.withUnsafeReadableBytes { target.copyMemory(from: $0) }
                }
                return StoredBytes(bytes: copied, etag: self.etag(shard, loc, count: range.count))
            } catch {
                throw ShardError(path: self.url(of: shard), reason: "\(error)")
            }
        }
    }

    /// A tile's stored bytes and where they lie in the shard; nil when the tile is absent.
    private func tileBytes(_ loc: ShardLocation, _ shard: PyramidManifest.Shard) async throws(ShardError) -> (
        ByteBuffer, (offset: UInt64, count: Int)
    )? {
        let index = try await index(shard)
        let range: (offset: UInt64, count: Int)
        do {
            guard let r = try index.tileRange(loc, path: url(of: shard)) else { return nil }
            range = r
        } catch let e as ShardError {
            throw failed(shard, e)
        } catch {
            throw failed(shard, ShardError(path: url(of: shard), reason: "\(error)"))
        }
        let object = key(of: shard)
        let diskKey = TileDiskCache.Key(object: object, offset: range.offset, count: range.count)
        if let disk = store.diskCache, let bytes = disk.read(diskKey, into: Self.bufferAllocate) {
            return (bytes, range)
        }
        let bytes = try await fetch(shard, offset: range.offset, count: range.count)
        store.diskCache?.write(diskKey, bytes)
        return (bytes, range)
    }

    private static let allocator = ByteBufferAllocator()
    private static let bufferAllocate: TileAllocator<ByteBuffer> = { count, fill in
        var buffer = allocator.buffer(capacity: count)
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { p in
            try fill(UnsafeMutableRawBufferPointer(rebasing: p[..<count]))
            return count
        }
        return buffer
    }

    /// `count` bytes of a shard from `offset`: one ranged GET, shared by concurrent callers.
    private func fetch(_ shard: PyramidManifest.Shard, offset: UInt64, count: Int) async throws(ShardError)
        -> ByteBuffer
    {
        let object = key(of: shard)
        let url = url(of: shard)
        let store = self.store
        do {
            return try await store.tileLoads.run("\(object)@\(offset)+\(count)") {
                let start = Int(offset)
                let answer: S3Object
                do throws(S3Error) {
                    answer = try await store.bucket.get(object, range: start..<(start + count))
                } catch {
                    throw Self.shardError(error, url: url)
                }
                store.counters.add(get: answer.bytes.readableBytes, tile: true)
                guard answer.totalSize == shard.bytes else { throw Self.replaced(url, answer.totalSize, shard) }
                guard answer.bytes.readableBytes == count, answer.offset == start else {
                    throw ShardError(
                        path: url, reason: "the store sent \(answer.bytes.readableBytes) bytes of the \(count) asked")
                }
                return answer.bytes
            }
        } catch let e as ShardError {
            throw failed(shard, e)
        } catch {
            throw failed(shard, ShardError(path: url, reason: "\(error)"))
        }
    }

    static func replaced(_ url: String, _ size: Int, _ shard: PyramidManifest.Shard) -> ShardError {
        ShardError(
            path: url, reason: "the object has \(size) bytes where the manifest says \(shard.bytes) (replaced or cut?)")
    }

    /// An S3 failure as a shard error: passing (timeout, 5xx, unreachable) or lasting.
    static func shardError(_ e: S3Error, url: String) -> ShardError {
        let transient = [.unavailable, .unreachable, .timeout].contains(e.kind)
        let reason = e.kind == .notFound ? "the object is gone (\(e.message))" : "\(e)"
        return ShardError(path: url, reason: reason, transient: transient)
    }

    // MARK: - Indexes

    /// The index of a shard: from the cache, else from one ranged GET of its head (two when the
    /// head is longer than the manifest let us guess), shared by concurrent callers.
    private func index(_ shard: PyramidManifest.Shard) async throws(ShardError) -> ShardIndex {
        let object = key(of: shard)
        if let index = store.indexes.get(object) { return index }
        try checkFailure(shard)
        let store = self.store
        let guess = Self.headGuess(shard, scheme: manifest.shardScheme)
        let url = url(of: shard)
        do {
            let index = try await store.indexLoads.run(object) {
                let index = try await Self.fetchIndex(store, object: object, url: url, shard: shard, guess: guess)
                store.indexes.set(object, index, cost: index.cost)
                return index
            }
            failures.withLock { _ = $0.removeValue(forKey: shard.coordinate) }
            return index
        } catch let e as ShardError {
            throw failed(shard, e)
        } catch {
            throw failed(shard, ShardError(path: url, reason: "\(error)"))
        }
    }

    /// The bytes a shard's head takes, from what the manifest says of it: the directories' fixed
    /// part and two arrays (offsets, byte counts) per image and per mask, 4 bytes an entry in a
    /// classic TIFF, 8 in a BigTIFF (over 4 GiB). Masks are assumed: a shard without them reads
    /// its head and some of its first tiles.
    static func headGuess(_ shard: PyramidManifest.Shard, scheme: ShardScheme) -> Int {
        let levels = scheme.band(containing: shard.z)?.levelCount ?? 1
        let entries = (0..<levels).reduce(0) { $0 + (1 << (2 * $1)) }
        let width = shard.bytes > Int(UInt32.max) - 1024 ? 8 : 4
        return min(shard.bytes, 4096 + levels * 2 * 512 + entries * 2 * 2 * width)
    }

    private static func fetchIndex(
        _ store: S3Store, object: String, url: String, shard: PyramidManifest.Shard, guess: Int
    ) async throws -> ShardIndex {
        var bytes: [UInt8] = []
        var wanted = max(16, guess)
        // Each round asks for more than the last (HeaderBytes doubles at least): a few at most.
        for _ in 0..<8 {
            let answer: S3Object
            do throws(S3Error) {
                answer = try await store.bucket.get(object, range: bytes.count..<max(bytes.count + 1, wanted))
            } catch {
                throw shardError(error, url: url)
            }
            store.counters.add(get: answer.bytes.readableBytes, index: true)
            guard answer.totalSize == shard.bytes else { throw replaced(url, answer.totalSize, shard) }
            guard answer.offset == bytes.count, answer.bytes.readableBytes > 0 else {
                throw ShardError(path: url, reason: "the store sent another range than the one asked")
            }
            bytes += answer.bytes.readableBytesView
            var header = ShardReader.HeaderBytes(bytes: bytes, fileSize: answer.totalSize, path: url)
            do {
                let (images, masks, _) = try ShardReader.parse(&header, path: url)
                return ShardIndex(images: images, masks: masks, objectSize: answer.totalSize)
            } catch let more as MoreHeaderNeeded {
                wanted = min(answer.totalSize, more.count)
            }
        }
        throw ShardError(path: url, reason: "its header does not end")
    }

    // MARK: - Failures

    /// Throws the failure of a shard met less than `failedShardRetry` ago, marked `repeated`.
    private func checkFailure(_ shard: PyramidManifest.Shard) throws(ShardError) {
        let now = ContinuousClock.now
        let retry = store.settings.failedShardRetry
        if let f = failures.withLock({ $0[shard.coordinate] }), now - f.at < retry {
            var e = f.error
            e.repeated = true
            throw e
        }
    }

    /// Records a failure of a shard and returns it as reported: marked `repeated` when the shard
    /// had already failed (or, for a passing failure, when one was reported a moment ago).
    private func failed(_ shard: PyramidManifest.Shard, _ error: ShardError) -> ShardError {
        var e = error
        let now = ContinuousClock.now
        if e.transient {
            lastTransient.withLock { last in
                if let l = last, now - l < .seconds(10) { e.repeated = true } else { last = now }
            }
            return e
        }
        if e.repeated { return e }
        store.indexes.remove(key(of: shard))
        failures.withLock { f in
            if f[shard.coordinate] != nil { e.repeated = true }
            f[shard.coordinate] = Failure(error: error, at: now)
        }
        return e
    }

    // MARK: - Reads that may block

    /// A tile's bytes and mask bytes (nil when it has none); nil when the tile is absent. Tile and
    /// mask lie side by side in a shard: one GET for both.
    private func tileAndMask(_ loc: ShardLocation, _ shard: PyramidManifest.Shard) async throws(ShardError) -> (
        [UInt8], [UInt8]?
    )? {
        let index = try await index(shard)
        let tile: (offset: UInt64, count: Int)
        let mask: (offset: UInt64, count: Int)?
        do {
            guard let t = try index.tileRange(loc, path: url(of: shard)) else { return nil }
            tile = t
            mask = try index.maskRange(loc, path: url(of: shard))
        } catch let e as ShardError {
            throw failed(shard, e)
        } catch {
            throw failed(shard, ShardError(path: url(of: shard), reason: "\(error)"))
        }
        guard let mask else {
            return (Array(try await fetch(shard, offset: tile.offset, count: tile.count).readableBytesView), nil)
        }
        if mask.offset == tile.offset + UInt64(tile.count) {
            let both = Array(
                try await fetch(shard, offset: tile.offset, count: tile.count + mask.count).readableBytesView)
            return (Array(both[..<tile.count]), Array(both[tile.count...]))
        }
        let bytes = try await fetch(shard, offset: tile.offset, count: tile.count)
        let maskBytes = try await fetch(shard, offset: mask.offset, count: mask.count)
        return (Array(bytes.readableBytesView), Array(maskBytes.readableBytesView))
    }

    private func waitTileAndMask(_ tile: TileCoordinate) throws -> ([UInt8], [UInt8]?)? {
        guard let (loc, shard) = locate(tile) else { return nil }
        return try ObjectStoreIO.wait { () async throws(ShardError) -> ([UInt8], [UInt8]?)? in
            try await self.tileAndMask(loc, shard)
        }
    }

    public func decodeTile(_ tile: TileCoordinate) throws -> [UInt8]? {
        guard let (bytes, mask) = try waitTileAndMask(tile) else { return nil }
        return try PyramidReader.decode(bytes, mask: mask, manifest: manifest)
    }

    public func withTileAndMask<R>(
        _ tile: TileCoordinate, _ body: (UnsafeRawBufferPointer, _ mask: UnsafeRawBufferPointer?) throws -> R
    ) throws -> R? {
        guard let (bytes, mask) = try waitTileAndMask(tile) else { return nil }
        return try bytes.withUnsafeBytes { b in
            guard let mask, !mask.elementsEqual(ShardWriter.fullMask) else { return try body(b, nil) }
            return try mask.withUnsafeBytes { try body(b, $0) }
        }
    }

    public func cover(_ tile: TileCoordinate) throws -> TileCover {
        guard let (loc, shard) = locate(tile) else { return .absent }
        return try ObjectStoreIO.wait { () async throws(ShardError) -> TileCover in
            let index = try await self.index(shard)
            let mask: (offset: UInt64, count: Int)?
            do {
                guard try index.tileRange(loc, path: self.url(of: shard)) != nil else { return .absent }
                mask = try index.maskRange(loc, path: self.url(of: shard))
            } catch let e as ShardError {
                throw self.failed(shard, e)
            } catch {
                throw self.failed(shard, ShardError(path: self.url(of: shard), reason: "\(error)"))
            }
            guard let mask else { return .full }
            guard mask.count == ShardWriter.fullMask.count else { return .partial }
            let bytes = try await self.fetch(shard, offset: mask.offset, count: mask.count)
            return bytes.readableBytesView.elementsEqual(ShardWriter.fullMask) ? .full : .partial
        }
    }

    /// The footprint beside the manifest, read from the bucket at most every `footprintTTL`
    /// (the tiler writes it just after the manifest: a pyramid opened in between sees it soon).
    public func tiledFootprint() throws -> Geometry? {
        let now = ContinuousClock.now
        if let known = footprint.withLock({ $0 }), now - known.read < store.settings.footprintTTL {
            return known.value
        }
        let path = "\(directory)/\(TiledFootprint.fileName)"
        let value = try store.read(path).map { try TiledFootprint.load(data: $0, name: store.url(path)).lambert93 }
        footprint.withLock { $0 = (value, now) }
        return value
    }
}
