import Foundation
import GeoGrid
import Logging
import Pyramid
import Raster
import Synchronization

/// How a tiling run behaves (the command line's flags).
public struct TileOptions: Sendable {
    public var store: String
    public var tmsDirectory: String
    /// Grids to build; empty means the tileset's own list.
    public var grids: [String] = []
    public var threads: Int = ProcessInfo.processInfo.activeProcessorCount
    public var resume = false
    public var dryRun = false
    public var keepGoing = false
    /// GDAL block cache, shared by all workers.
    public var cacheMB = 48

    public init(store: String, tmsDirectory: String) {
        self.store = store
        self.tmsDirectory = tmsDirectory
    }
}

/// What a run did, for the final summary.
public struct TilingSummary: Sendable {
    public struct GridResult: Sendable {
        public var grid: String
        public var minZoom: Int
        public var maxZoom: Int
        public var shards: Int
        public var shardsReused: Int
        public var tiles: Int
        public var bytes: Int
        public var pixelsRead: Int
        public var failed: [String]
        public var seconds: Double
    }

    public var sources: Int
    public var sourcePixels: Int
    public var skipped: [(path: String, reason: String)]
    public var grids: [GridResult]
    public var plans: [GridPlan]
    public var seconds: Double
}

/// The tiling run: index the sources, plan the shards, build them in parallel band by band,
/// and record `pyramid.json`. Killed at any moment, a rerun with `resume` redoes only the
/// shards not yet finished.
public final class Tiler {
    public let definition: TilesetDefinition
    public let options: TileOptions
    let logger: Logger
    let progress: Progress

    public init(definition: TilesetDefinition, options: TileOptions, logger: Logger, progress: Progress? = nil) {
        self.definition = definition
        self.options = options
        self.logger = logger
        self.progress = progress ?? Progress(logger: logger)
    }

    var tilesetDirectory: String { (options.store as NSString).appendingPathComponent(definition.id) }

    public func run() throws -> TilingSummary {
        let started = Date()
        GDAL.setCacheMax(bytes: options.cacheMB << 20)
        // Dalles kept open by the mosaics: a few per worker is enough, and each holds memory and a
        // file descriptor (GDAL's default, 100, grows peak memory with the input).
        if ProcessInfo.processInfo.environment["GDAL_MAX_DATASET_POOL_SIZE"] == nil {
            GDAL.setConfig("GDAL_MAX_DATASET_POOL_SIZE", "\(max(16, 4 * options.threads + 8))")
        }
        let catalog = try TileMatrixSetCatalog.load(directory: options.tmsDirectory)
        let gridIDs = options.grids.isEmpty ? definition.grids : options.grids
        let grids = try gridIDs.map { id in
            guard let g = catalog.grid(id) else { throw TilerError.unknownGrid(id, known: catalog.sets.keys.sorted()) }
            return (id: id, g: g)
        }

        // 1. Source index, cached beside the store.
        let paths = expandSources(definition.sources)
        guard !paths.isEmpty else {
            throw TilerError.noSources("nothing matches \(definition.sources.joined(separator: ", "))")
        }
        let indexPath = (tilesetDirectory as NSString).appendingPathComponent(SourceIndex.fileName)
        progress.start("index", total: paths.count)
        let index = SourceIndex.build(
            paths: paths, cache: SourceIndex.load(path: indexPath), threads: options.threads,
            onProgress: { [progress] _ in progress.advance() })
        progress.finish()
        if !options.dryRun { try index.save(path: indexPath) }
        for e in index.skipped { logger.error("skipping dalle \(e.name): \(e.error ?? "")") }
        let usable = index.usable
        logger.info("\(usable.count) source dalle(s) usable, \(index.skipped.count) skipped")

        // 2. Plans.
        var plans: [GridPlan] = []
        for grid in grids {
            let plan = try Planner.plan(
                grid: grid.g.tms, sources: usable, minZoom: definition.minZoom ?? grid.g.minZoom,
                maxZoom: definition.maxZoom ?? grid.g.maxZoom)
            plans.append(plan)
        }
        var summary = TilingSummary(
            sources: usable.count, sourcePixels: usable.reduce(0) { $0 + $1.width * $1.height },
            skipped: index.skipped.map { ($0.path, $0.error ?? "") }, grids: [], plans: plans, seconds: 0)
        if options.dryRun { return summary }

        // 3. Build, grid by grid.
        let bad = BadDalles()
        for plan in plans {
            summary.grids.append(try build(plan, usable: usable, digest: index.digest, bad: bad))
        }
        for (path, reason) in bad.all.sorted(by: { $0.key < $1.key }) {
            logger.error("skipped dalle \((path as NSString).lastPathComponent) while tiling: \(reason)")
            summary.skipped.append((path, reason))
        }
        summary.seconds = Date().timeIntervalSince(started)
        return summary
    }

    private func build(_ plan: GridPlan, usable: [SourceEntry], digest: String, bad: BadDalles) throws
        -> TilingSummary.GridResult
    {
        let started = Date()
        let tms = plan.tms
        let directory = (tilesetDirectory as NSString).appendingPathComponent(tms.id)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        Self.removeTemporaryFiles(in: directory)
        let journal = try Journal(
            directory: directory, header: journalHeader(plan, digest: digest), resume: options.resume)
        var done = journal.done
        let reused = done.count
        if reused > 0 { logger.info("\(tms.id): resuming, \(reused) shard(s) already finished") }

        // Footprints in the grid's CRS, each tied to its dalle.
        let footprints = RectIndex(Array(zip(plan.footprints, usable)))
        var failed: [String] = []
        var pixelsRead = 0
        for (b, band) in plan.scheme.bands.enumerated() {
            let todo = plan.shards[b].filter { done[$0] == nil }
            let label = "\(definition.id)/\(tms.id) z\(band.deepest)→\(band.top)"
            progress.start(label, total: plan.shards[b].count)
            progress.advance(units: plan.shards[b].count - todo.count)
            let existing = Set(done.compactMap { $0.value == nil ? nil : $0.key })
            // Work items: whole shards, or each shard's four quadrants (so two cores share even one shard).
            let parts = ShardBuilder.splits(band) ? 4 : 1
            let items = todo.flatMap { s in (0..<parts).map { (s, parts == 1 ? nil : $0) } }
            let results = ResultSlots<(TileCoordinate, Result<(ShardSummary?, Int), Error>)>(count: todo.count)
            let jobs = Mutex<[TileCoordinate: ShardJob]>([:])
            let counter = Counter()
            let options = self.options
            let definition = self.definition
            let progress = self.progress
            let below = b > 0 ? plan.scheme.bands[b - 1] : nil
            let journalRef = journal
            let slot = Dictionary(uniqueKeysWithValues: todo.enumerated().map { ($1, $0) })
            DispatchQueue.concurrentPerform(iterations: max(1, min(options.threads, items.count))) { _ in
                var builder: ShardBuilder?
                var setupError: Error?
                do {
                    let reader: LeafReader =
                        if let below {
                            try PyramidLevelReader(
                                directory: directory, below: below, format: definition.format, existing: existing)
                        } else {
                            try DalleReader(
                                tms: tms, footprints: footprints, resampling: definition.reprojectionResampling,
                                bad: bad)
                        }
                    builder = try ShardBuilder(
                        tms: tms, band: band, format: definition.format, quality: definition.quality, reader: reader,
                        overviewResampling: definition.overviewResampling)
                } catch {
                    setupError = error
                }
                while true {
                    let i = counter.next()
                    if i >= items.count { break }
                    let (shard, quadrant) = items[i]
                    let path = (directory as NSString).appendingPathComponent(ShardScheme.path(of: shard))
                    let job: ShardJob
                    do {
                        guard let builder else { throw setupError ?? RasterError("worker set-up failed") }
                        job = try jobs.withLock { all in
                            if let j = all[shard] { return j }
                            let j = ShardJob(
                                shard: shard, writer: try builder.makeWriter(shard: shard, path: path), parts: parts)
                            all[shard] = j
                            return j
                        }
                    } catch {
                        results.set(slot[shard] ?? 0, (shard, .failure(error)))
                        continue
                    }
                    var canvas: Canvas?
                    var pixels = 0
                    var failure: Error?
                    do {
                        if let quadrant, let builder {
                            (canvas, pixels) = try builder.buildQuadrant(job, quadrant: quadrant)
                        } else if let builder {
                            pixels = try builder.buildWhole(job)
                        }
                    } catch {
                        failure = error
                    }
                    let (last, merged) = job.complete(
                        quadrant: quadrant, canvas: canvas, pixels: pixels, error: failure,
                        nearest: builder?.nearestOverviews ?? false)
                    guard last else { continue }
                    jobs.withLock { _ = $0.removeValue(forKey: shard) }
                    do {
                        if let error = job.error { throw error }
                        if parts > 1, let builder { try builder.merge(job, merged: merged) }
                        let summary = try job.writer.finish()
                        journalRef.record(shard, summary)
                        results.set(slot[shard] ?? 0, (shard, .success((summary, job.pixelsRead))))
                        progress.advance(pixels: job.pixelsRead, bytes: summary?.bytes ?? 0)
                    } catch {
                        results.set(slot[shard] ?? 0, (shard, .failure(error)))
                        progress.advance()
                    }
                }
            }
            progress.finish()
            for (shard, r) in results.values {
                switch r {
                case .success(let (summary, pixels)):
                    done[shard] = summary
                    pixelsRead += pixels
                case .failure(let error):
                    logger.error("shard \(tms.id) \(shard) failed: \(error)")
                    failed.append("\(shard): \(error)")
                }
            }
            if !failed.isEmpty && !options.keepGoing { break }
        }

        // 4. The manifest lists what exists; files of earlier plans that are no longer wanted go.
        let shards = done.compactMap { (c, s) -> PyramidManifest.Shard? in
            guard let s else { return nil }
            return PyramidManifest.Shard(
                z: c.z, col: c.col, row: c.row, path: ShardScheme.path(of: c), bytes: s.bytes,
                crc32: String(format: "%08x", s.crc32), tiles: s.tiles)
        }.sorted { ($0.z, $0.row, $0.col) < ($1.z, $1.row, $1.col) }
        if failed.isEmpty || options.keepGoing {
            removeStaleShards(directory: directory, keep: Set(shards.map(\.path)))
            var manifest = PyramidManifest(
                tileset: definition.id, tileMatrixSet: tms, tileSize: 256, format: definition.format,
                quality: definition.quality, resampling: definition.overviewResampling.rawValue,
                minZoom: plan.scheme.minZoom, maxZoom: plan.scheme.maxZoom, levels: plan.levels, bounds: plan.bounds,
                wgs84Bounds: plan.wgs84Bounds, shardScheme: plan.scheme, shards: shards, sourcesDigest: digest,
                created: ISO8601DateFormatter().string(from: Date()), tool: "dallage \(DallageVersion.current)")
            manifest.title = definition.title
            manifest.abstract = definition.abstract
            manifest.attribution = definition.attribution
            manifest.publish = definition.publish
            try manifest.save(directory: directory)
            // What is really there, from the masks: coverage progress reads it.
            try TiledFootprint.record(try PyramidReader(directory: directory), directory: directory)
        }
        return TilingSummary.GridResult(
            grid: tms.id, minZoom: plan.scheme.minZoom, maxZoom: plan.scheme.maxZoom, shards: shards.count,
            shardsReused: reused, tiles: shards.reduce(0) { $0 + $1.tiles }, bytes: shards.reduce(0) { $0 + $1.bytes },
            pixelsRead: pixelsRead, failed: failed, seconds: Date().timeIntervalSince(started))
    }

    private func journalHeader(_ plan: GridPlan, digest: String) -> String {
        "sources=\(digest) grid=\(plan.tms.id) z=\(plan.scheme.minZoom)-\(plan.scheme.maxZoom) "
            + "format=\(definition.format.rawValue) quality=\(definition.quality) "
            + "resampling=\(definition.reprojectionResampling.rawValue) tool=\(DallageVersion.current)"
    }

    /// Deletes half-written shards and spools left by a killed run (hidden names).
    static func removeTemporaryFiles(in directory: String) {
        guard let e = FileManager.default.enumerator(atPath: directory) else { return }
        while let f = e.nextObject() as? String {
            let name = (f as NSString).lastPathComponent
            if name.hasPrefix("."), name.hasSuffix(".tmp") || name.hasSuffix(".spool") {
                try? FileManager.default.removeItem(atPath: (directory as NSString).appendingPathComponent(f))
            }
        }
    }

    private func removeStaleShards(directory: String, keep: Set<String>) {
        let root = (directory as NSString).appendingPathComponent("shards")
        guard let e = FileManager.default.enumerator(atPath: root) else { return }
        while let f = e.nextObject() as? String {
            guard f.hasSuffix(".tif"), !keep.contains("shards/\(f)") else { continue }
            logger.info("removing stale shard shards/\(f)")
            try? FileManager.default.removeItem(atPath: (root as NSString).appendingPathComponent(f))
        }
    }
}

/// The tool's version, recorded in every manifest.
public enum DallageVersion {
    public static let current = "0.1.0"
}

/// An append-only record of finished shards (`.journal`), fsynced per line, read back by `--resume`.
final class Journal: Sendable {
    private let path: String
    private let handle: Mutex<FileHandle?>
    let done: [TileCoordinate: ShardSummary?]

    init(directory: String, header: String, resume: Bool) throws {
        path = (directory as NSString).appendingPathComponent(".journal")
        var done: [TileCoordinate: ShardSummary?] = [:]
        if resume, let text = try? String(contentsOfFile: path, encoding: .utf8) {
            let lines = text.split(separator: "\n")
            guard let first = lines.first, first == "# " + header else {
                throw TilerError.resumeMismatch(
                    "the sources or settings changed since the interrupted run in \(directory); rerun without --resume")
            }
            for line in lines.dropFirst() {
                let f = line.split(separator: " ")
                guard f.count == 6, let z = Int(f[0]), let c = Int(f[1]), let r = Int(f[2]), let bytes = Int(f[3]),
                    let crc = UInt32(f[4], radix: 16), let tiles = Int(f[5])
                else { continue }
                let coord = TileCoordinate(z: z, col: c, row: r)
                if tiles == 0 {
                    done[coord] = .some(nil)
                    continue
                }
                // Trust the line only if the file is there with the recorded size.
                let file = (directory as NSString).appendingPathComponent(ShardScheme.path(of: coord))
                if let size = (try? FileManager.default.attributesOfItem(atPath: file))?[.size] as? Int, size == bytes {
                    done[coord] = ShardSummary(bytes: bytes, crc32: crc, tiles: tiles)
                }
            }
        }
        self.done = done
        if !resume || done.isEmpty {
            try Data("# \(header)\n".utf8).write(to: URL(fileURLWithPath: path))
        }
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        h.seekToEndOfFile()
        handle = Mutex(h)
    }

    /// Records a finished shard (nil: planned but empty).
    func record(_ shard: TileCoordinate, _ s: ShardSummary?) {
        let line =
            "\(shard.z) \(shard.col) \(shard.row) \(s?.bytes ?? 0) \(String(format: "%08x", s?.crc32 ?? 0)) \(s?.tiles ?? 0)\n"
        handle.withLock { h in
            h?.write(Data(line.utf8))
            try? h?.synchronize()
        }
    }
}
