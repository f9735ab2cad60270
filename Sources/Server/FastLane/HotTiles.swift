import Foundation
import GeoGrid
import Metrics
import NIOCore
import Serving
import Synchronization

/// Stored tiles the fast lane answered lately, kept as ready responses (``Entry``) and shared by
/// every event loop: a hit writes the same buffers again — no shard lookup, no copy, no
/// allocation, no header formatting. One budget in bytes for the server, and a tile is kept once
/// whichever loop asked for it: kept per loop, the budget was cut in as many parts as there are
/// cores and each part held the same popular tiles, so a working set twice a loop's part missed
/// about half the time (20 KB tiles, `bench/server`). Cut into stripes by tile, each with its own
/// lock and a sixteenth of the budget (a larger tile is not kept), so two loops seldom meet on one
/// lock (as the pyramid reader's open shards); oldest out first within a stripe. Keyed by the
/// shard's content (pyramid, file, checksum: a shard is never rewritten under its path), not by the
/// catalog's version: a new generation leaves every tile of the shards it did not rebuild in
/// place, and a rebuilt shard's tiles are new keys, so no old copy can answer for them.
final class HotTiles: Sendable {
    struct Key: Hashable, Sendable {
        /// `ServedPyramid.contentKey(of:)` of the tile.
        var shard: UInt64
        var tile: TileCoordinate

        /// One word for the hasher, not four: hashing is per request (keys still compare whole).
        func hash(into hasher: inout Hasher) {
            let t = tile
            hasher.combine(
                shard ^ (UInt64(truncatingIfNeeded: t.col) &<< 35) ^ (UInt64(truncatingIfNeeded: t.row) &<< 6)
                    ^ UInt64(truncatingIfNeeded: t.z))
        }
    }

    /// A tile's bytes and validator with the rest of its response heads after the status line,
    /// the date and the server (``HeadStarts``), made once: never changed after, so every loop may
    /// write them at once.
    final class Entry: Sendable {
        /// The tile, its bytes right after `fields` in one buffer.
        let response: TileResponse
        /// The tile's own fields, its `Content-Length` and the blank line, then the tile's bytes:
        /// a 200 to a GET, written whole after its start, with no copy.
        let answer: ByteBuffer
        /// The same without the bytes: a 200 to a HEAD.
        let fields: ByteBuffer
        /// The tile's own fields for a 304 and the blank line.
        let notModifiedFields: ByteBuffer
        /// Bytes of memory it holds, counted against the cache's budget.
        let cost: Int
        /// The entry, its two buffers' storage and the stripe's key and order slots, about.
        static let objectBytes = 160

        init(_ response: TileResponse, allocator: ByteBufferAllocator) {
            // The fields and the bytes share one buffer: an answer is one write of one object
            // (its start apart), and takes a reference on that object only.
            var whole = allocator.buffer(capacity: 256 + response.bytes.readableBytes)
            response.headerFields(current: false) { whole.writeField($0.canonicalName, $1) }
            whole.writeField("Content-Length", String(response.bytes.readableBytes))
            whole.writeStaticString("\r\n")
            let fieldsLength = whole.readableBytes
            whole.writeImmutableBuffer(response.bytes)
            answer = whole
            fields = whole.getSlice(at: whole.readerIndex, length: fieldsLength) ?? whole
            var tile = response
            tile.bytes =
                whole.getSlice(at: whole.readerIndex + fieldsLength, length: response.bytes.readableBytes)
                ?? tile.bytes
            self.response = tile
            var notModified = allocator.buffer(capacity: 128)
            response.headerFields(current: true) { notModified.writeField($0.canonicalName, $1) }
            notModified.writeStaticString("\r\n")
            notModifiedFields = notModified
            // The memory it holds: its two buffers as allocated (NIO rounds a buffer up to a power
            // of two: a 20 KB tile takes 32 KB), and its objects.
            cost = whole.capacity + notModified.capacity + Self.objectBytes
        }
    }

    private struct Tiles {
        var entries: [Key: Entry] = [:]
        var order = CircularBuffer<Key>()
        var bytes = 0
    }

    let capacity: Int
    private let stripeCapacity: Int
    /// The stripes' locks in one allocation this cache owns: reached by pointer arithmetic, so a
    /// lookup takes no reference on a shared object (an array of stripe objects made every
    /// request retain and release one, a counter both event loops write: `perf` on 20 KB tiles
    /// counted the retains in `get` 28 % lower without it; the entry's own retain remains).
    private nonisolated(unsafe) let stripes: UnsafeMutablePointer<Mutex<Tiles>>
    private static let stripeCount = 16

    init(capacity: Int) {
        self.capacity = capacity
        stripeCapacity = capacity / Self.stripeCount
        stripes = .allocate(capacity: Self.stripeCount)
        for i in 0..<Self.stripeCount { (stripes + i).initialize(to: Mutex(Tiles())) }
    }

    deinit {
        stripes.deinitialize(count: Self.stripeCount)
        stripes.deallocate()
    }

    private func stripe(_ key: Key) -> UnsafeMutablePointer<Mutex<Tiles>> {
        let t = key.tile
        return stripes + ((t.col &* 31 &+ t.row &* 17 &+ t.z) & (Self.stripeCount - 1))
    }

    /// What `body` takes from a tile's ready response, nil when it is not kept. The entry is
    /// looked at in place, under its stripe's lock: no reference on it is taken (both loops
    /// write an entry's reference count, and taking one cost as much as the rest of the lookup).
    func read<R: Sendable>(_ key: Key, _ body: (Entry) -> R) -> R? {
        guard stripeCapacity > 0 else { return nil }
        return stripe(key).pointee.withLock { t in t.entries[key].map(body) }
    }

    /// The memory the kept tiles hold, as counted against `capacity`.
    var bytes: Int {
        (0..<Self.stripeCount).reduce(0) { sum, i in sum + (stripes + i).pointee.withLock { $0.bytes } }
    }

    /// Keeps a tile's ready response.
    func put(_ key: Key, _ entry: Entry) {
        guard entry.cost <= stripeCapacity else { return }
        stripe(key).pointee.withLock { t in
            guard t.entries[key] == nil else { return }
            t.entries[key] = entry
            t.order.append(key)
            t.bytes += entry.cost
            while t.bytes > stripeCapacity, let oldest = t.order.popFirst() {
                if let gone = t.entries.removeValue(forKey: oldest) { t.bytes -= gone.cost }
            }
        }
    }
}

/// What the fast lane keeps per event loop: its metrics tally, used only on that loop (no lock),
/// its count of answers, its heads' start, and the server's hot tiles.
final class FastLaneLoop {
    let hot: HotTiles
    let tally: FastLaneTally
    let answers: LaneCount
    /// The start of every head the loop's connections write, made once a second.
    var starts: HeadStarts

    init(hot: HotTiles, service: TileService, serverName: String) {
        self.hot = hot
        tally = FastLaneTally(tilesServed: service.tilesServed)
        answers = service.makeLaneCount()
        starts = HeadStarts(serverName: serverName)
    }
}

/// One ``FastLaneLoop`` per event loop, made on its loop at the first connection there; each
/// hands its tally to the shared metrics every second.
final class FastLaneLoops: Sendable {
    private let hot: HotTiles
    private let service: TileService
    private let serverName: String
    private let loops = Mutex<[ObjectIdentifier: NIOLoopBound<FastLaneLoop>]>([:])

    /// `hotTileBytes` in all, for the hot tiles every loop shares; `serverName` in every head.
    init(hotTileBytes: Int, service: TileService, serverName: String) {
        hot = HotTiles(capacity: hotTileBytes)
        self.service = service
        self.serverName = serverName
    }

    /// Keeps a stored tile the router read (from a store that answers later) as a ready response,
    /// under the key the fast lane looks up: the lane answers it next time. Safe from any thread.
    func remember(_ t: ResolvedTile, _ response: TileResponse) {
        guard let shard = t.pyramid.contentKey(of: t.tile) else { return }
        hot.put(HotTiles.Key(shard: shard, tile: t.tile), HotTiles.Entry(response, allocator: Self.allocator))
    }

    private static let allocator = ByteBufferAllocator()
    /// The memory the hot tiles hold, against `hot_tile_cache_bytes` (set each second by each loop).
    static let hotBytes = Gauge(label: "dallage_hot_tile_cache_bytes")

    /// The state of `loop`; call it on that loop.
    func state(on loop: any EventLoop) -> FastLaneLoop {
        loops.withLock { loops in
            if let bound = loops[ObjectIdentifier(loop)] { return bound.value }
            let state = FastLaneLoop(hot: hot, service: service, serverName: serverName)
            let bound = NIOLoopBound(state, eventLoop: loop)
            loops[ObjectIdentifier(loop)] = bound
            let hot = hot
            loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
                bound.value.tally.flush()
                Self.hotBytes.record(hot.bytes)
            }
            return state
        }
    }
}

extension ByteBuffer {
    /// `name: value` and CRLF, as an HTTP/1 head holds a field.
    mutating func writeField(_ name: String, _ value: String) {
        writeString(name)
        writeStaticString(": ")
        writeString(value)
        writeStaticString("\r\n")
    }
}

/// What starts every head the fast lane writes, before a tile's own fields: the status line, then
/// `Date` and `Server` as Hummingbird writes them, and CORS when the request had an `Origin`. Made
/// anew once a second on each event loop, never changed after (a response still waiting for the
/// socket keeps its own): an answer writes one of them, then the tile's ready fields and bytes,
/// and copies nothing. (The router writes the same fields after the tile's; the order of fields
/// of different names carries no meaning in HTTP.)
struct HeadStarts {
    let serverName: String
    /// The second the date stands for, in seconds since 1970.
    private(set) var second = -1
    /// `HTTP/1.1 200 OK`, `Date`, `Server`; with CORS; the same for a 304, and with CORS.
    private(set) var ok = ByteBuffer()
    private(set) var okWithCORS = ByteBuffer()
    private(set) var notModified = ByteBuffer()
    private(set) var notModifiedWithCORS = ByteBuffer()

    init(serverName: String) { self.serverName = serverName }

    /// The start of a 200 or a 304, with CORS or without.
    func start(notModified current: Bool, cors: Bool) -> ByteBuffer {
        switch (current, cors) {
        case (false, false): ok
        case (false, true): okWithCORS
        case (true, false): notModified
        case (true, true): notModifiedWithCORS
        }
    }

    /// Brings all four up to the second `now`.
    mutating func update(_ now: Int = time(nil), allocator: ByteBufferAllocator) {
        guard now != second else { return }
        var t = now
        var parts = tm()
        gmtime_r(&t, &parts)
        var text = [CChar](repeating: 0, count: 40)
        let n = strftime(&text, text.count, "%a, %d %b %Y %H:%M:%S GMT", &parts)
        let date = String(decoding: text[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        func start(_ status: StaticString, cors: Bool) -> ByteBuffer {
            var b = allocator.buffer(capacity: 128)
            b.writeStaticString(status)
            b.writeField("Date", date)
            b.writeField("Server", serverName)
            if cors { b.writeField("Access-Control-Allow-Origin", "*") }
            return b
        }
        ok = start("HTTP/1.1 200 OK\r\n", cors: false)
        okWithCORS = start("HTTP/1.1 200 OK\r\n", cors: true)
        notModified = start("HTTP/1.1 304 Not Modified\r\n", cors: false)
        notModifiedWithCORS = start("HTTP/1.1 304 Not Modified\r\n", cors: true)
        second = now
    }
}
