import Foundation
import GeoGrid

/// Decoded blocks of the dalles that are costly to decode (JPEG 2000), shared by the workers of a
/// build, so that each block is decoded once however many reads straddle it.
///
/// A tiler's reads are squares of the grid (2048 px) that fall across a dalle's own blocks (JPEG
/// 2000 tiles of 1024 px, say), and a block on the edge of a read is needed again by the read
/// next to it, often in a part of the shard another worker builds. GDAL's block cache is per
/// dataset handle, so per worker, and small: through it the workers decoded each JPEG 2000 tile
/// about three times (814 decodes for 256 tiles on 16 dalles of the benchmark). Here a block is
/// decoded by the first worker that needs it (the others wait for it rather than decode it too),
/// kept while reads still to come will ask for it, and dropped after the last; a budget bounds
/// what is kept in any case, dropping the least recently used (a block dropped early is only
/// decoded again).
final class DecodedBlocks: @unchecked Sendable {
    /// A block of one dalle: its column and row in the dalle's block grid.
    struct Key: Hashable, Sendable {
        var path: String
        var col: Int
        var row: Int
    }

    /// One decoded block, RGBA (alpha from the dalle's alpha band or mask). Written once by the
    /// worker that decodes it, only read after; freed when the cache and its last reader let go.
    final class Block: @unchecked Sendable {
        let width: Int
        let height: Int
        let pixels: UnsafeMutablePointer<UInt8>

        init(width: Int, height: Int) {
            self.width = width
            self.height = height
            pixels = .allocate(capacity: width * height * 4)
        }

        deinit { pixels.deallocate() }

        var bytes: Int { width * height * 4 }
    }

    /// What is kept by default per worker (reads of a band wait for the blocks on their edges:
    /// a row of 1024-px blocks across a shard of 32768 px is 128 MB).
    static let budgetPerWorker = 128 << 20

    /// The most bytes of decoded blocks kept at once.
    let budget: Int

    private enum State {
        case decoding
        case ready(Block)
    }

    private struct Slot {
        var state: State
        /// Reads still to come that will ask for the block, when known.
        var remaining: Int?
        var lastUse: Int
    }

    /// Guards everything below; waiters for a block being decoded wait on it.
    private let condition = NSCondition()
    private var slots: [Key: Slot] = [:]
    /// Reads counted ahead (``ReadPlan``) for blocks not decoded yet.
    private var expected: [Key: Int] = [:]
    private var held = 0
    private var clock = 0
    private var decodeCount = 0
    private var droppedEarlyCount = 0

    init(budget: Int) { self.budget = max(0, budget) }

    /// Blocks decoded so far (a block dropped by the budget and needed again counts twice).
    var decodes: Int { condition.withLock { decodeCount } }
    /// Blocks dropped by the budget while reads that were counted on them had not come yet.
    var droppedEarly: Int { condition.withLock { droppedEarlyCount } }
    /// Blocks counted on by ``expect`` that no read has asked for yet.
    var expectedBlocks: Int { condition.withLock { expected.count } }
    /// Bytes of decoded blocks kept now.
    var bytesHeld: Int { condition.withLock { held } }

    /// The block at `key`, decoded by `decode` unless it is here already or another worker is
    /// decoding it (then this one waits for it). `uses` is how many reads of the whole build will
    /// ask for it, when the caller knows: the block is dropped after the last one's `done`.
    func block(_ key: Key, uses: Int?, decode: () throws -> Block) throws -> Block {
        condition.lock()
        while let slot = slots[key] {
            if case .ready(let b) = slot.state {
                clock += 1
                slots[key]?.lastUse = clock
                condition.unlock()
                return b
            }
            condition.wait()
        }
        let uses = uses ?? expected.removeValue(forKey: key)
        slots[key] = Slot(state: .decoding, remaining: uses, lastUse: clock)
        condition.unlock()

        let decoded: Block
        do {
            decoded = try decode()
        } catch {
            condition.lock()
            slots[key] = nil
            condition.broadcast()
            condition.unlock()
            throw error
        }

        condition.lock()
        defer { condition.unlock() }
        clock += 1
        decodeCount += 1
        slots[key] = Slot(state: .ready(decoded), remaining: uses, lastUse: clock)
        held += decoded.bytes
        dropOverBudget(keeping: key)
        condition.broadcast()
        return decoded
    }

    /// Counts reads to come for blocks, one per occurrence of a key: a block decoded without a
    /// count of its own (`uses` nil) is dropped after the last of these.
    func expect(_ keys: [Key]) {
        condition.lock()
        defer { condition.unlock() }
        for key in keys {
            if let slot = slots[key] {
                // Already decoded or being decoded: counted with it, if it is counted at all.
                if let remaining = slot.remaining { slots[key]?.remaining = remaining + 1 }
            } else {
                expected[key, default: 0] += 1
            }
        }
    }

    /// Records that a read is done with `key`: after the last counted read, the block is dropped.
    func done(_ key: Key) {
        condition.lock()
        defer { condition.unlock() }
        guard let slot = slots[key], case .ready(let b) = slot.state, let remaining = slot.remaining else { return }
        if remaining <= 1 {
            slots[key] = nil
            held -= b.bytes
        } else {
            slots[key]?.remaining = remaining - 1
        }
    }

    /// Drops the least recently used blocks (not `keeping`, which is being handed out) until the
    /// budget holds.
    private func dropOverBudget(keeping: Key) {
        while held > budget {
            var oldest: (key: Key, lastUse: Int, bytes: Int, counted: Bool)?
            for (k, slot) in slots where k != keeping {
                guard case .ready(let b) = slot.state else { continue }
                if oldest == nil || slot.lastUse < oldest?.lastUse ?? .max {
                    oldest = (k, slot.lastUse, b.bytes, slot.remaining != nil)
                }
            }
            guard let oldest else { return }
            slots[oldest.key] = nil
            held -= oldest.bytes
            if oldest.counted { droppedEarlyCount += 1 }
        }
    }
}

/// The reads a build will make, counted ahead for the decoded blocks of warped reads (another CRS
/// or resolution than the dalles'), where reads do not tile the dalles and no read knows alone how
/// many others will ask for a block: without a count, a block stays until the budget drops it,
/// and one on the edge of two shards was often dropped before the second shard came (268 decodes
/// for 256 blocks on 16 dalles to `PM`).
///
/// Counts are made shard by shard, for the shard about to be built and the shards around it, so
/// a block's count is whole before its first read (a block is smaller than a shard, so every
/// shard that reads it is next to every other one) while only the shards near the work are
/// counted, whatever the size of the region.
final class ReadPlan: @unchecked Sendable {
    /// The shards the build reads sources for, at the band's top level, and their band (a
    /// shard's reads are ``ShardBuilder/deepestReads(of:band:blockTiles:)``).
    let shards: Set<TileCoordinate>
    let band: ShardScheme.Band
    let decoded: DecodedBlocks
    private let lock = NSLock()
    private var counted: Set<TileCoordinate> = []

    init(shards: Set<TileCoordinate>, band: ShardScheme.Band, decoded: DecodedBlocks) {
        self.shards = shards
        self.band = band
        self.decoded = decoded
    }

    /// Counts the reads of `shard` and of the shards around it not counted yet, each read's
    /// blocks given by `blocks` (one worker at a time: a worker beginning a shard another is
    /// counting waits for its count).
    func prepare(around shard: TileCoordinate, blocks: (TileCoordinate) throws -> [DecodedBlocks.Key]) throws {
        try lock.withLock {
            for dr in -1...1 {
                for dc in -1...1 {
                    let s = TileCoordinate(z: shard.z, col: shard.col + dc, row: shard.row + dr)
                    guard shards.contains(s), !counted.contains(s) else { continue }
                    counted.insert(s)
                    decoded.expect(try blocks(s))
                }
            }
        }
    }
}
