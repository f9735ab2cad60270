import Foundation
import GeoGrid
import Metrics
import NIOCore
import Serving
import Synchronization

/// Stored tiles the fast lane answered lately on one event loop, kept as ready responses: the
/// bytes copied out of the shard once, the response head up to `Content-Length` written once. A
/// hit writes the same buffers again — no shard lookup, no copy, no header formatting. Used only
/// on its event loop (no lock), bounded in bytes (oldest out first), emptied when the catalog
/// changes so a rebuilt pyramid is never answered from an old copy.
final class HotTiles {
    struct Key: Hashable {
        /// The served pyramid (the catalog keeps it alive as long as its version holds).
        var pyramid: ObjectIdentifier
        var tile: TileCoordinate
    }

    final class Entry {
        let response: TileResponse
        /// `HTTP/1.1 200 OK`, the tile's own headers and its `Content-Length`, CRLF-terminated.
        let head: ByteBuffer
        let cost: Int

        init(_ response: TileResponse, allocator: ByteBufferAllocator) {
            self.response = response
            var head = allocator.buffer(capacity: 192)
            head.writeStaticString("HTTP/1.1 200 OK\r\n")
            response.headerFields(current: false) { head.writeField($0.canonicalName, $1) }
            head.writeField("Content-Length", String(response.bytes.readableBytes))
            self.head = head
            cost = response.bytes.readableBytes + head.readableBytes + 160
        }
    }

    let capacity: Int
    private var entries: [Key: Entry] = [:]
    private var order = CircularBuffer<Key>()
    private var bytes = 0
    private var catalogVersion = -1

    init(capacity: Int) { self.capacity = capacity }

    /// The ready response for a tile, nil when it is not kept; everything kept is dropped first
    /// when the catalog's version has moved.
    func get(_ key: Key, catalogVersion version: Int) -> Entry? {
        guard capacity > 0 else { return nil }
        if version != catalogVersion {
            entries.removeAll()
            order.removeAll()
            bytes = 0
            catalogVersion = version
        }
        return entries[key]
    }

    /// Keeps a tile's ready response, made from the catalog at `catalogVersion`.
    func put(_ key: Key, _ entry: Entry, catalogVersion version: Int) {
        guard version == catalogVersion, entry.cost <= capacity, entries.updateValue(entry, forKey: key) == nil
        else { return }
        order.append(key)
        bytes += entry.cost
        while bytes > capacity, let oldest = order.popFirst() {
            if let gone = entries.removeValue(forKey: oldest) { bytes -= gone.cost }
        }
    }
}

/// What the fast lane keeps per event loop: its ready tiles and its metrics tally. Used only on
/// that loop, so neither needs a lock.
final class FastLaneLoop {
    let hot: HotTiles
    let tally: FastLaneTally

    init(hotTileBytes: Int, tilesServed: Counter) {
        hot = HotTiles(capacity: hotTileBytes)
        tally = FastLaneTally(tilesServed: tilesServed)
    }
}

/// One ``FastLaneLoop`` per event loop, made on its loop at the first connection there; each
/// hands its tally to the shared metrics every second.
final class FastLaneLoops: Sendable {
    private let hotTileBytes: Int
    private let tilesServed: Counter
    private let loops = Mutex<[ObjectIdentifier: NIOLoopBound<FastLaneLoop>]>([:])

    /// `hotTileBytes` in all, shared out between `loopCount` event loops (Hummingbird runs one
    /// per core).
    init(hotTileBytes: Int, tilesServed: Counter, loopCount: Int = System.coreCount) {
        self.hotTileBytes = hotTileBytes / max(1, loopCount)
        self.tilesServed = tilesServed
    }

    /// The state of `loop`; call it on that loop.
    func state(on loop: any EventLoop) -> FastLaneLoop {
        loops.withLock { loops in
            if let bound = loops[ObjectIdentifier(loop)] { return bound.value }
            let state = FastLaneLoop(hotTileBytes: hotTileBytes, tilesServed: tilesServed)
            let bound = NIOLoopBound(state, eventLoop: loop)
            loops[ObjectIdentifier(loop)] = bound
            loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in bound.value.tally.flush() }
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

/// The `Date` header, formatted once a second.
struct HTTPDate {
    private var second = 0
    private var text = ""

    mutating func now() -> String {
        var t = time(nil)
        if t != second {
            var parts = tm()
            gmtime_r(&t, &parts)
            var buffer = [CChar](repeating: 0, count: 40)
            let n = strftime(&buffer, buffer.count, "%a, %d %b %Y %H:%M:%S GMT", &parts)
            text = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            second = t
        }
        return text
    }
}
