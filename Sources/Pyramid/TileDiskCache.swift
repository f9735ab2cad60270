import Foundation
import NIOCore
import Synchronization

/// Tile bytes fetched from an object store, kept on local disk (`tile_disk_cache: {path, bytes}`)
/// so that a tile fallen out of memory costs a `pread` rather than a GET. One file per tile,
/// named by a hash of the shard's key and the tile's range (a shard is never rewritten under its
/// key, so a range of it always holds the same bytes). Bounded in bytes: the least recently used
/// files go first. What it holds is known only to this process: files an earlier run left are
/// removed at start rather than trusted.
public final class TileDiskCache: Sendable {
    /// A tile's place: the shard's object key and the byte range.
    public struct Key: Hashable, Sendable {
        public var object: String
        public var offset: UInt64
        public var count: Int

        /// The range `offset..<offset+count` of `object`.
        public init(object: String, offset: UInt64, count: Int) {
            self.object = object
            self.offset = offset
            self.count = count
        }
    }

    /// The folder of the files.
    public let directory: String
    /// The most bytes of tiles kept.
    public let capacity: Int

    private struct Entry {
        var count: Int
        var tick: UInt64
    }
    private struct State {
        var entries: [UInt64: Entry] = [:]
        var total = 0
        var tick: UInt64 = 0
    }
    private let state = Mutex(State())
    /// Files are written behind the requests, one at a time.
    private let writes = DispatchQueue(label: "dallage.tile-disk-cache", qos: .utility)

    static let suffix = ".tile"

    /// A cache of at most `capacity` bytes in `directory` (created if needed; tile files left
    /// there by an earlier run are removed, nothing else is touched).
    public init(directory: String, capacity: Int) throws {
        self.directory = directory
        self.capacity = max(0, capacity)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) where name.hasSuffix(Self.suffix) {
            unlink((directory as NSString).appendingPathComponent(name))
        }
    }

    /// Bytes of tiles kept now.
    public var bytes: Int { state.withLock { $0.total } }
    /// Tiles kept now.
    public var count: Int { state.withLock { $0.entries.count } }

    private static func hash(_ key: Key) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "\(key.object)@\(key.offset)+\(key.count)".utf8 { h = (h ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        return h
    }

    private func path(_ hash: UInt64) -> String {
        (directory as NSString).appendingPathComponent(String(hash, radix: 16) + Self.suffix)
    }

    /// The bytes kept for `key`, read into memory `allocate` gives; nil when none are kept or
    /// they cannot be read (then they are forgotten).
    public func read<B>(_ key: Key, into allocate: TileAllocator<B>) -> B? {
        let h = Self.hash(key)
        let known = state.withLock { s -> Bool in
            guard var e = s.entries[h], e.count == key.count else { return false }
            s.tick += 1
            e.tick = s.tick
            s.entries[h] = e
            return true
        }
        guard known else { return nil }
        let fd = open(path(h), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            forget(h)
            return nil
        }
        defer { close(fd) }
        do {
            return try allocate(key.count) { buffer in
                var done = 0
                while done < buffer.count {
                    let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(done))
                    if n > 0 {
                        done += n
                    } else if n < 0, errno == EINTR {
                        continue
                    } else {
                        throw ShardError(path: path(h), reason: "short read")
                    }
                }
            }
        } catch {
            forget(h)
            return nil
        }
    }

    private func forget(_ h: UInt64) {
        state.withLock { s in
            if let e = s.entries.removeValue(forKey: h) { s.total -= e.count }
        }
    }

    /// Keeps `bytes` for `key`, written behind the caller; the oldest files go when the cache is
    /// full. A tile larger than a sixteenth of the cache is not kept.
    public func write(_ key: Key, _ bytes: ByteBuffer) {
        guard bytes.readableBytes == key.count, key.count > 0, key.count <= capacity / 16 else { return }
        writes.async { [self] in
            let h = Self.hash(key)
            guard state.withLock({ $0.entries[h] == nil }) else { return }
            let file = path(h)
            let temporary = file + ".part"
            let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { return }
            var written = 0
            bytes.withUnsafeReadableBytes { p in
                while written < p.count {
                    let n = Foundation.write(fd, p.baseAddress! + written, p.count - written)
                    if n > 0 {
                        written += n
                    } else if n < 0, errno == EINTR {
                        continue
                    } else {
                        break
                    }
                }
            }
            close(fd)
            guard written == key.count, rename(temporary, file) == 0 else {
                unlink(temporary)
                return
            }
            let victims = state.withLock { s -> [UInt64] in
                s.tick += 1
                s.entries[h] = Entry(count: key.count, tick: s.tick)
                s.total += key.count
                guard s.total > capacity else { return [] }
                // The oldest quarter goes at once, so eviction is paid for seldom.
                var out: [UInt64] = []
                for (k, e) in s.entries.sorted(by: { $0.value.tick < $1.value.tick }) where s.total > capacity * 3 / 4 {
                    s.entries[k] = nil
                    s.total -= e.count
                    out.append(k)
                }
                return out
            }
            for v in victims { unlink(path(v)) }
        }
    }
}
