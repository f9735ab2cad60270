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
    /// A worker's share or the finisher of a cluster build: the sources, tileset and grids come
    /// from its plan (see `ClusterPlan`).
    public var cluster: ClusterRun?
    /// With an `s3://` store: the folder shards are built in before they are uploaded (default
    /// the temporary folder, TMPDIR).
    public var staging: String?
    /// Where an `s3://` store's endpoint and credentials come from (the AWS variables).
    public var environment: [String: String] = ProcessInfo.processInfo.environment

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
        /// The generation this build made current.
        public var generation: Int
        /// Shards in the new generation; of them, built by this run, taken from the base
        /// generation untouched, and finished by an interrupted run (`--resume`).
        public var shards: Int
        public var shardsBuilt: Int
        public var shardsReused: Int
        public var shardsResumed: Int
        /// Tiles of the rebuilt shards copied as stored bytes from their previous version, and
        /// tiles encoded from the sources.
        public var tilesCopied: Int
        public var tilesEncoded: Int
        public var tiles: Int
        public var bytes: Int
        public var pixelsRead: Int
        public var failed: [String]
        public var seconds: Double
        /// Of the shards built, those that turned out empty (planned from the dalles' outlines,
        /// no pixel there): not kept.
        public var shardsEmpty = 0
    }

    public var sources: Int
    public var sourcePixels: Int
    public var skipped: [(path: String, reason: String)]
    public var grids: [GridResult]
    public var plans: [GridPlan]
    /// Per planned grid, what changed since its current generation and the shards rebuilt and reused.
    public var updates: [GridUpdate]
    public var seconds: Double
}

/// The tiling run: index the sources, plan the shards, compare with the pyramid's current
/// generation, build the shards the changed dalles reach in parallel band by band (the others are
/// reused as they are), and switch `pyramid.json` to the new generation. Killed at any moment, a
/// rerun with `resume` redoes only the shards not yet finished.
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

    /// With an `s3://` store, the bucket and the staging folder the build runs in.
    var target: BucketTarget?

    var tilesetDirectory: String {
        ((target?.staging ?? options.store) as NSString).appendingPathComponent(definition.id)
    }

    public func run() throws -> TilingSummary {
        let started = Date()
        try openTarget()
        defer { target?.shutdown() }
        // A last worker's finish stages in a folder of its own (its pid in the name), of no use
        // to anyone once it ends, finished or not.
        defer {
            if options.cluster?.finishIfLast == true, let own = target?.privateStaging {
                try? FileManager.default.removeItem(atPath: own)
            }
        }
        let prepared = try prepare()
        var summary = prepared.summary
        if options.dryRun { return summary }
        // A worker or a finisher checks its plan against the store before writing anything.
        let finished = try options.cluster.map { try preflight($0, prepared) } ?? []

        // 3. Build, grid by grid.
        let bad = BadDalles()
        for (plan, index) in zip(prepared.plans, prepared.plans.indices) where !finished.contains(index) {
            summary.grids.append(
                try build(plan, usable: prepared.usable, digest: prepared.index.digest, bad: bad))
        }
        for (path, reason) in bad.all.sorted(by: { $0.key < $1.key }) {
            logger.error("skipped dalle \((path as NSString).lastPathComponent) while tiling: \(reason)")
            summary.skipped.append((path, reason))
        }
        // A worker's own staging folder holds nothing once its shards are uploaded.
        if let own = target?.privateStaging, summary.grids.allSatisfy(\.failed.isEmpty) {
            try? FileManager.default.removeItem(atPath: own)
        }
        summary.seconds = Date().timeIntervalSince(started)
        return summary
    }

    /// With an `s3://` store, connects to the bucket (checked before any work) and sets up the
    /// staging folder the build runs in; the caller shuts it down. A cluster worker builds in a
    /// staging folder of its own (its plan and share in the name): workers sharing a host would
    /// otherwise empty each other's; the finisher builds in the one a single build uses (and takes
    /// its lock), and checks it reaches the endpoint the plan was made on.
    func openTarget() throws {
        guard case .s3(let bucket, let prefix) = try StoreLocation(parsing: options.store) else { return }
        let cluster = options.cluster
        let target = try BucketTarget(
            bucket: bucket, prefix: prefix, staging: options.staging ?? NSTemporaryDirectory(),
            privateFolder: cluster?.share.map { "worker-\(cluster?.plan.id ?? "")-\($0.index)-of-\($0.count)" }
                ?? (cluster?.finishIfLast == true ? "finish-\(cluster?.plan.id ?? "")-\(getpid())" : nil),
            environment: options.environment)
        if let plan = cluster?.plan, let planned = plan.endpoint, planned != target.endpoint {
            target.shutdown()
            throw ClusterError(
                "plan \(plan.id) was made on \(plan.store) at \(planned), and this run reaches \(target.endpoint): give every worker and the finisher the planning host's AWS_ENDPOINT_URL and AWS_REGION"
            )
        }
        self.target = target
    }

    /// The sources, the grids and their plans, and what each plan changes in the store.
    struct Prepared {
        /// The grids as asked, with the level limits of a level-limited id.
        var grids: [(id: String, minZoom: Int?, maxZoom: Int?)]
        var index: SourceIndex
        var usable: [SourceEntry]
        var plans: [GridPlan]
        var updates: [GridUpdate]
        /// Per plan, with an `s3://` store, what moves its pyramid between bucket and staging.
        var remotes: [BucketPublisher?]
        var summary: TilingSummary
    }

    /// Indexes the sources (or takes them from the cluster plan) and plans every grid.
    func prepare() throws -> Prepared {
        GDAL.setCacheMax(bytes: options.cacheMB << 20)
        // Dalles kept open by the mosaics: a few per worker is enough, and each holds memory and a
        // file descriptor (GDAL's default, 100, grows peak memory with the input).
        if ProcessInfo.processInfo.environment["GDAL_MAX_DATASET_POOL_SIZE"] == nil {
            GDAL.setConfig("GDAL_MAX_DATASET_POOL_SIZE", "\(max(16, 4 * options.threads + 8))")
        }
        let grids: [(id: String, g: (tms: TileMatrixSet, minZoom: Int?, maxZoom: Int?))]
        if let cluster = options.cluster {
            grids = cluster.plan.grids.map { ($0.id, ($0.tileMatrixSet, $0.minZoom, $0.maxZoom)) }
        } else {
            let catalog = try TileMatrixSetCatalog.load(directory: options.tmsDirectory)
            let gridIDs = options.grids.isEmpty ? definition.grids : options.grids
            grids = try gridIDs.map { id in
                guard let g = catalog.grid(id) else {
                    throw TilerError.unknownGrid(id, known: catalog.sets.keys.sorted())
                }
                return (id: id, g: g)
            }
        }

        try checkLayer()

        // 1. Source index, cached beside the store; a cluster's is in its plan.
        if definition.sources.contains(where: { $0.hasPrefix("s3://") }) {
            try ObjectSources.configureGDAL(environment: options.environment)
        }
        let index = try options.cluster?.plan.verifiedSources() ?? indexSources()
        // A readable dalle that does not lie inside every grid is skipped as an unreadable one
        // is: named, with the reason, in the log and the summary.
        var transforms: [String: CoordinateTransform?] = [:]
        var usable: [SourceEntry] = []
        var skipped = index.skipped.map { (entry: $0, reason: $0.error ?? "") }
        for e in index.usable {
            if let reason = Planner.misplacement(of: e, in: grids.map(\.g.tms), transforms: &transforms) {
                skipped.append((e, reason))
            } else {
                usable.append(e)
            }
        }
        for (e, reason) in skipped { logger.error("skipping dalle \(e.name): \(reason)") }
        logger.info("\(usable.count) source dalle(s) usable, \(skipped.count) skipped")

        // 2. Plans, and what each changes in the store.
        var plans: [GridPlan] = []
        var updates: [GridUpdate] = []
        var remotes: [BucketPublisher?] = []
        for grid in grids {
            let plan = try Planner.plan(
                grid: grid.g.tms, sources: usable, minZoom: definition.minZoom ?? grid.g.minZoom,
                maxZoom: definition.maxZoom ?? grid.g.maxZoom)
            plans.append(plan)
            let folder = PyramidFolder(directory(of: plan))
            let remote = target.map {
                BucketPublisher(pyramid: $0.pyramid(tileset: definition.id, grid: plan.tms.id), staging: folder)
            }
            // The finisher checks the workers' records before anything is written.
            try remote?.pull(records: options.cluster?.role == .finish)
            remotes.append(remote)
            let previous = try folder.current()
            updates.append(
                GridUpdate.make(
                    plan: plan, sources: generationSources(plan, usable: usable), previous: previous,
                    previousSources: previous?.generation.flatMap { folder.sources(generation: $0) }))
        }
        let summary = TilingSummary(
            sources: usable.count, sourcePixels: usable.reduce(0) { $0 + $1.width * $1.height },
            skipped: skipped.map { ($0.entry.path, $0.reason) }, grids: [], plans: plans, updates: updates,
            seconds: 0)
        return Prepared(
            grids: grids.map { ($0.id, $0.g.minZoom, $0.g.maxZoom) }, index: index, usable: usable, plans: plans,
            updates: updates, remotes: remotes, summary: summary)
    }

    /// Indexes the tileset's sources, reusing and updating the cache beside the store.
    private func indexSources() throws -> SourceIndex {
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
        return index
    }

    func directory(of plan: GridPlan) -> String {
        (tilesetDirectory as NSString).appendingPathComponent(plan.tms.id)
    }

    /// The dalles of a plan as the generation records them.
    func generationSources(_ plan: GridPlan, usable: [SourceEntry]) -> GenerationSources {
        GenerationSources(
            settings: settings(plan),
            dalles: zip(usable, plan.footprints).map { e, box in
                GenerationSources.Dalle(
                    path: e.path, bytes: e.fileSize, modified: e.modified, footprint: box,
                    resolution: e.width > 0 ? max(box.width / Double(e.width), box.height / Double(e.height)) : 0)
            })
    }

    /// Everything but the dalles that decides a pyramid's bytes: a build with other settings
    /// reuses nothing.
    func settings(_ plan: GridPlan) -> String {
        "grid=\(plan.tms.id) z=\(plan.scheme.minZoom)-\(plan.scheme.maxZoom) bands=\(plan.scheme.levelsPerBand) "
            + "format=\(definition.format.rawValue) quality=\(definition.quality) "
            + "resampling=\(definition.reprojectionResampling.rawValue) overviews=\(definition.overviewResampling.rawValue)"
    }

    private func build(_ plan: GridPlan, usable: [SourceEntry], digest: String, bad: BadDalles) throws
        -> TilingSummary.GridResult
    {
        let started = Date()
        let tms = plan.tms
        let directory = directory(of: plan)
        let folder = PyramidFolder(directory)
        // One build (or rollback, or gc) of a pyramid at a time; the kernel drops the lock of a
        // killed process. A cluster's workers build side by side in a shared folder store, each in
        // its own files: they neither take the lock nor remove the others' half-written ones. Into
        // a bucket each worker has a staging folder of its own, which it locks and cleans like a
        // single build; a second copy of the same worker on this host (a requeue while the first
        // still runs) waits for the first, then finds its share recorded.
        let worker = options.cluster?.share
        let sharedFolder = worker != nil && target == nil
        /// The folder's build lock, waited for (saying why) when another process holds it.
        func waitedLock(_ holder: String) throws -> FileLock {
            let path = folder.path(".build.lock")
            var said = false
            while true {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                let lock: FileLock
                if let free = try? FileLock(path, wait: false) {
                    lock = free
                } else {
                    if !said { logger.info("\(holder) (\(directory)): waiting for it to end") }
                    said = true
                    lock = try FileLock(path, wait: true)
                }
                // The holder may have removed the folder as it ended: lock the one there now.
                if lock.isStillAtItsPath { return lock }
            }
        }
        let lock: FileLock?
        if sharedFolder {
            lock = nil
        } else if let worker {
            lock = try waitedLock("worker \(worker) is already running on this host")
        } else if options.cluster?.finishIfLast == true {
            // Two workers that ended together both found every shard built: the second waits for
            // the first to finish (or to fail: then it finishes), and finds the generation current.
            lock = try waitedLock("another dallage process is finishing or building this pyramid")
        } else {
            lock = try FileLock.build(folder, doing: "this build")
        }
        defer { withExtendedLifetime(lock) {} }
        if !sharedFolder { Self.removeTemporaryFiles(in: directory) }
        // A worker builds its share of the deepest band and leaves the rest to the finisher.
        let mine: Set<TileCoordinate>? = worker == nil ? nil : options.cluster?.assigned?[plan.tms.id] ?? []
        // Into a bucket: the staging folder takes the bucket's state (a fresh copy, under the lock).
        let remote = target.map {
            BucketPublisher(pyramid: $0.pyramid(tileset: definition.id, grid: tms.id), staging: folder)
        }
        if let remote {
            try? FileManager.default.removeItem(atPath: folder.path("shards"))
            // A worker needs only its share's records; the finisher every one, which it fetched for
            // its check a moment ago (a region's build leaves tens of thousands: not twice).
            let finisher = options.cluster?.role == .finish
            try remote.pull(
                records: (options.resume || options.cluster != nil) && !finisher, keepingRecords: finisher, only: mine)
        }
        /// A shard's size in the store (the bucket's listing, or the file), nil when it is not there.
        func storedSize(_ relative: String) -> Int? {
            if let remote { return remote.size(relative) }
            return (try? FileManager.default.attributesOfItem(atPath: folder.path(relative)))?[.size] as? Int
        }
        // Read again under the lock: the generation built on is the one current now.
        let previous = try folder.current()
        let sources = generationSources(plan, usable: usable)
        let update = GridUpdate.make(
            plan: plan, sources: sources, previous: previous,
            previousSources: previous?.generation.flatMap { folder.sources(generation: $0) })
        let generation = update.generation
        let planID = Self.planID(settings: sources.settings, digest: digest, base: update.base)
        if let previous, update.isNoChange(previous: previous),
            previous.title == definition.title, previous.abstract == definition.abstract,
            previous.attribution == definition.attribution, previous.publish == definition.publish,
            (remote?.missingShards(of: previous) ?? folder.missingShards(of: previous)).isEmpty
        {
            // Nothing to build and nothing to say: the current generation stays (a new one
            // listing the same shards would only make servers reload).
            if let run = options.cluster, run.role == .finish,
                run.plan.grids.first(where: { $0.tileMatrixSet.id == tms.id })?.generation == update.base
            {
                // Another finisher (a worker that ended at the same time) switched while this one
                // waited for the lock.
                logger.info(
                    "\(tms.id): generation \(update.base) of plan \(run.plan.id) is already current: nothing to do")
            } else {
                logger.info("\(tms.id): nothing changed since generation \(update.base)")
            }
            return TilingSummary.GridResult(
                grid: tms.id, minZoom: plan.scheme.minZoom, maxZoom: plan.scheme.maxZoom, generation: update.base,
                shards: previous.shards.count, shardsBuilt: 0, shardsReused: previous.shards.count, shardsResumed: 0,
                tilesCopied: 0, tilesEncoded: 0, tiles: previous.shards.reduce(0) { $0 + $1.tiles },
                bytes: previous.shards.reduce(0) { $0 + $1.bytes }, pixelsRead: 0, failed: [],
                seconds: Date().timeIntervalSince(started))
        }
        if let reason = update.fullReason {
            logger.info("\(tms.id): generation \(generation), every shard built (\(reason))")
        } else {
            logger.info(
                "\(tms.id): generation \(generation) over \(update.base): dalles \(update.added.count) added, \(update.changed.count) changed, \(update.removed.count) removed; \(update.rebuildCount) shard(s) to build, \(update.reuseCount) reused"
            )
        }

        // Shards an interrupted run of this same plan finished.
        var resumed: [TileCoordinate: ShardRecord] = [:]
        if options.resume || options.cluster != nil {
            let records = folder.records()
            resumed = records.filter { _, r in
                guard r.plan == planID else { return false }
                guard let path = r.path else { return true }
                // Trust a record only if its file is there with the recorded size.
                return storedSize(path) == r.bytes
            }
            if options.cluster == nil, resumed.isEmpty, !records.isEmpty {
                throw TilerError.resumeMismatch(
                    "the sources or settings changed since the interrupted run in \(directory); rerun without --resume")
            }
            if !resumed.isEmpty, worker == nil {
                logger.info("\(tms.id): resuming, \(resumed.count) shard(s) already finished")
            }
        } else {
            folder.clearRecords()
            try remote?.clearRecords()
        }
        // What the staging folder keeps of each band's shards once uploaded: the coarse levels the
        // band above reads, down to the level the footprint is traced at when it lies in the band.
        let traceLevel = TiledFootprint.level(
            levels: plan.levels, minZoom: plan.scheme.minZoom, maxZoom: plan.scheme.maxZoom, tileSize: 256)
        @Sendable func kept(_ band: ShardScheme.Band) -> Int {
            (band.top...band.deepest).contains(traceLevel) ? band.deepest - traceLevel : band.deepest - band.top
        }

        // The new generation's shards as they become known: reused, resumed, built.
        var shardsNow: [TileCoordinate: PyramidManifest.Shard] = [:]
        let previousShards = Dictionary(
            (previous?.shards ?? []).map { ($0.coordinate, $0) }, uniquingKeysWith: { a, _ in a })
        var reused = 0
        var built = 0
        var empty = 0
        var copied = 0
        var encoded = 0
        func add(_ c: TileCoordinate, _ r: ShardRecord) {
            copied += r.copied
            encoded += r.encoded
            guard let path = r.path else { return }
            shardsNow[c] = PyramidManifest.Shard(
                z: c.z, col: c.col, row: c.row, path: path, bytes: r.bytes, crc32: r.crc32, tiles: r.tiles)
        }

        let durable = Durability()
        // Footprints in the grid's CRS, each tied to its dalle.
        let footprints = RectIndex(Array(zip(plan.footprints, usable)))
        let decoded = DecodedBlocks(budget: DecodedBlocks.budgetPerWorker * max(2, options.threads))
        var failed: [String] = []
        var pixelsRead = 0
        for (b, band) in plan.scheme.bands.enumerated() where worker == nil || b == 0 {
            // Reused as they are, unless the file is not what the base generation recorded.
            var rebuild = update.rebuild[b]
            for old in update.reuse[b] {
                if storedSize(old.path) == old.bytes {
                    shardsNow[old.coordinate] = old
                    reused += 1
                } else {
                    logger.warning(
                        "\(tms.id): \(old.path) of generation \(update.base) is missing or damaged; building it again")
                    rebuild.append(old.coordinate)
                }
            }
            for s in rebuild { if let r = resumed[s] { add(s, r) } }
            let todo = rebuild.filter { resumed[$0] == nil && mine?.contains($0) != false }
            let label =
                (worker.map { "worker \($0) " } ?? "") + "\(definition.id)/\(tms.id) z\(band.deepest)→\(band.top)"
            let total = mine?.count ?? plan.shards[b].count
            progress.start(label, total: total)
            progress.advance(units: total - todo.count)
            let below = b > 0 ? plan.scheme.bands[b - 1] : nil
            let belowShards = Dictionary(
                shardsNow.filter { below != nil && $0.key.z == below?.top }.map { ($0.key, $0.value.path) },
                uniquingKeysWith: { a, _ in a })
            if let remote {
                try remote.prepare(
                    band: band, below: below, todo: todo, previous: todo.compactMap { previousShards[$0]?.path },
                    belowShards: belowShards, keepBelow: below.map(kept) ?? 0, threads: options.threads)
            }
            // Work items: whole shards, or each shard's parts (so two cores share even one shard).
            let partsPerSide = ShardBuilder.partsPerSide(band)
            let parts = partsPerSide * partsPerSide
            // Parts that read sources first, parts that only copy from the previous version
            // after: taken in that order, the last items are short and both cores finish
            // together (a tranche's few costly parts met last kept one core alone for a third
            // of the build).
            let all = todo.flatMap { s in (0..<parts).map { (s, parts == 1 ? nil : $0) } }
            func copiesOnly(_ item: (TileCoordinate, Int?)) -> Bool {
                guard previousShards[item.0] != nil, let area = update.area else { return false }
                return !area.touches(ShardBuilder.bounds(of: item.1, shard: item.0, band: band, tms: tms))
            }
            let items = all.filter { !copiesOnly($0) } + all.filter(copiesOnly)
            let results = ResultSlots<(TileCoordinate, Result<(ShardRecord, Int), Error>)>(count: todo.count)
            let jobs = Mutex<[TileCoordinate: ShardJob]>([:])
            let counter = Counter()
            let options = self.options
            let definition = self.definition
            let progress = self.progress
            let area = update.area
            let slot = Dictionary(uniqueKeysWithValues: todo.enumerated().map { ($1, $0) })
            let readPlan = below == nil ? ReadPlan(shards: Set(todo), band: band, decoded: decoded) : nil
            DispatchQueue.concurrentPerform(iterations: max(1, min(options.threads, items.count))) { _ in
                var builder: ShardBuilder?
                var setupError: Error?
                do {
                    let reader: LeafReader =
                        if let below {
                            try PyramidLevelReader(
                                directory: directory, below: below, format: definition.format, shards: belowShards,
                                nearest: definition.overviewResampling == .nearest)
                        } else {
                            try DalleReader(
                                tms: tms, footprints: footprints, resampling: definition.reprojectionResampling,
                                bad: bad, decoded: decoded, plan: readPlan)
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
                    let (shard, part) = items[i]
                    let relative = PyramidFolder.shardPath(shard, generation: generation)
                    let job: ShardJob
                    do {
                        guard let builder else { throw setupError ?? RasterError("worker set-up failed") }
                        job = try jobs.withLock { all in
                            if let j = all[shard] { return j }
                            // The shard as the base generation has it: what no changed dalle
                            // reaches is copied from there.
                            let previous = try previousShards[shard].map { try ShardReader(path: folder.path($0.path)) }
                            let j = ShardJob(
                                shard: shard, writer: try builder.makeWriter(shard: shard, path: folder.path(relative)),
                                partsPerSide: partsPerSide, previous: previous, area: previous == nil ? nil : area)
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
                        if let part, let builder {
                            (canvas, pixels) = try builder.buildPart(job, part: part)
                        } else if let builder {
                            pixels = try builder.buildWhole(job)
                        }
                    } catch {
                        failure = error
                    }
                    let (last, merged) = job.complete(
                        part: part, canvas: canvas, pixels: pixels, error: failure,
                        nearest: builder?.nearestOverviews ?? false)
                    guard last else { continue }
                    jobs.withLock { _ = $0.removeValue(forKey: shard) }
                    do {
                        if let error = job.error { throw error }
                        if parts > 1, let builder { try builder.merge(job, merged: merged) }
                        // Several threads write the shard when no work is left for them: at the
                        // end of a band (a tranche's one big shard), not while all are busy.
                        let idle = counter.peek >= items.count
                        let summary = try job.writer.finish(parallelism: idle ? options.threads : 1, sync: false)
                        let record = ShardRecord(
                            plan: planID, path: summary == nil ? nil : relative, bytes: summary?.bytes ?? 0,
                            crc32: String(format: "%08x", summary?.crc32 ?? 0), tiles: summary?.tiles ?? 0,
                            copied: job.copied.load(ordering: .relaxed), encoded: job.encoded.load(ordering: .relaxed))
                        // On disk (and in the bucket), then recorded (resume trusts a record), while
                        // the build goes on.
                        // A worker's shards are read again by the finisher, from the bucket.
                        let keep = worker == nil ? kept(band) : nil
                        durable.then(sync: summary == nil ? nil : folder.path(relative)) {
                            if let remote {
                                if summary != nil { try remote.publish(relative, keep: keep) }
                                try remote.record(record, for: shard)
                            }
                            try folder.record(record, for: shard)
                        }
                        results.set(slot[shard] ?? 0, (shard, .success((record, job.pixelsRead))))
                        progress.advance(pixels: job.pixelsRead, bytes: summary?.bytes ?? 0)
                    } catch {
                        results.set(slot[shard] ?? 0, (shard, .failure(error)))
                        progress.advance()
                    }
                }
            }
            progress.finish()
            remote?.dropPrevious(todo.compactMap { previousShards[$0]?.path })
            for (shard, r) in results.values {
                switch r {
                case .success(let (record, pixels)):
                    add(shard, record)
                    built += 1
                    if record.path == nil { empty += 1 }
                    pixelsRead += pixels
                case .failure(let error):
                    logger.error("shard \(tms.id) \(shard) failed: \(error)")
                    failed.append("\(shard): \(error)")
                }
            }
            if !failed.isEmpty && !options.keepGoing { break }
        }

        if decoded.decodes > 0 {
            logger.info(
                "\(tms.id): \(decoded.decodes) JPEG 2000 block(s) decoded, \(decoded.droppedEarly) dropped early")
        }
        // Every shard on disk and recorded before any manifest names it.
        if let error = durable.wait() {
            logger.error("\(tms.id): a built shard could not be flushed or recorded: \(error)")
            failed.append("\(error)")
        }

        // 4. The switch: the new generation's manifest, made current only over the one built on.
        let shards = shardsNow.values.sorted { ($0.z, $0.row, $0.col) < ($1.z, $1.row, $1.col) }
        if worker == nil, failed.isEmpty || options.keepGoing {
            var manifest = PyramidManifest(
                tileset: definition.id, tileMatrixSet: tms, tileSize: 256, format: definition.format,
                quality: definition.quality, resampling: definition.overviewResampling.rawValue,
                minZoom: plan.scheme.minZoom, maxZoom: plan.scheme.maxZoom, levels: plan.levels, bounds: plan.bounds,
                wgs84Bounds: plan.wgs84Bounds, shardScheme: plan.scheme, shards: shards, sourcesDigest: digest,
                created: ISO8601DateFormatter().string(from: Date()), tool: "dallage \(DallageVersion.current)")
            manifest.formatVersion = PyramidFolder.formatVersion
            manifest.generation = generation
            manifest.title = definition.title
            manifest.abstract = definition.abstract
            manifest.attribution = definition.attribution
            manifest.publish = definition.publish
            manifest.layer = definition.layer
            manifest.vintage = definition.vintage
            if let remote {
                do {
                    try remote.commit(manifest, sources: sources)
                } catch let error as GenerationError where options.cluster?.role == .finish {
                    // Two finishers of one plan (two last workers, on two hosts) raced: the other
                    // switched to this very generation, which is this run's result too. Any other
                    // generation there is the conflict it says.
                    guard let current = try remote.current(), current.generation == generation,
                        current.sourcesDigest == digest, current.shards == manifest.shards
                    else { throw error }
                    // The records of the bands above it wrote after the other cleared them.
                    try remote.clearRecords()
                    logger.info(
                        "\(tms.id): generation \(generation) of plan \(options.cluster?.plan.id ?? "") was made current by another finisher at the same time: nothing more to do"
                    )
                    return TilingSummary.GridResult(
                        grid: tms.id, minZoom: plan.scheme.minZoom, maxZoom: plan.scheme.maxZoom,
                        generation: generation, shards: shards.count, shardsBuilt: built, shardsReused: reused,
                        shardsResumed: resumed.count, tilesCopied: copied, tilesEncoded: encoded,
                        tiles: shards.reduce(0) { $0 + $1.tiles }, bytes: shards.reduce(0) { $0 + $1.bytes },
                        pixelsRead: pixelsRead, failed: failed, seconds: Date().timeIntervalSince(started),
                        shardsEmpty: empty)
                }
                try remote.clearRecords()
                // The footprint's level of every shard, in the staging folder.
                if let band = plan.scheme.band(containing: traceLevel) {
                    try remote.fetchPrefixes(
                        shards.filter { $0.z == band.top }.map(\.path), keep: kept(band), threads: options.threads)
                }
            } else {
                try folder.commit(manifest, sources: sources)
            }
            folder.clearRecords()
            // What is really there, from the masks: coverage progress reads it.
            try TiledFootprint.record(try PyramidReader(directory: directory), directory: directory)
            if let remote {
                try remote.publishFootprint()
                remote.cleanUp()
            }
        } else if worker != nil {
            // Its shards and records are in the bucket; what is staged is of no further use.
            remote?.cleanUp()
        }
        return TilingSummary.GridResult(
            grid: tms.id, minZoom: plan.scheme.minZoom, maxZoom: plan.scheme.maxZoom, generation: generation,
            shards: shards.count, shardsBuilt: built, shardsReused: reused, shardsResumed: resumed.count,
            tilesCopied: copied, tilesEncoded: encoded, tiles: shards.reduce(0) { $0 + $1.tiles },
            bytes: shards.reduce(0) { $0 + $1.bytes }, pixelsRead: pixelsRead, failed: failed,
            seconds: Date().timeIntervalSince(started), shardsEmpty: empty)
    }

    /// Refuses a layer or vintage that clashes with another tileset of the store (the same layer
    /// and vintage, a layer named like a tileset, a tileset named like a layer), before any work.
    func checkLayer() throws {
        var others: [String: (layer: String?, vintage: Vintage?)] = (try target?.layers(except: definition.id)) ?? [:]
        for listing in (try? FolderStore(options.store).list()) ?? [] where listing.tileset != definition.id {
            let dir = FolderStore(options.store).directory(tileset: listing.tileset, grid: listing.grid)
            guard let m = try? PyramidManifest.load(directory: dir) else { continue }
            others[listing.tileset] = (m.layer, m.vintage)
        }
        if let why = LayerRules.conflict(
            tileset: definition.id, layer: definition.layer, vintage: definition.vintage, others: others)
        {
            throw TilerError.invalidTileset(why)
        }
    }

    /// Names one build: the same sources and settings over the same generation give the same
    /// id, so a resumed or repeated run recognises the records of its own plan.
    static func planID(settings: String, digest: String, base: Int) -> String {
        let text = "\(settings)|sources=\(digest)|base=\(base)|tool=\(DallageVersion.current)"
        return String(format: "%08x", Array(text.utf8).withUnsafeBytes { Deflate.crc32($0) })
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
}

/// Flushes built shards to disk and writes their records, one after the other, behind the
/// builders: a shard's disk writes overlap the next shards and bands instead of holding the
/// worker that wrote it (a tranche's rebuilt shard is a few hundred MB). A thread of its own,
/// started when work comes and ended when none is left: Dispatch's pool, busy with the builders,
/// could start one late.
final class Durability: @unchecked Sendable {
    /// Guards every field below.
    private let signal = NSCondition()
    private var work: [@Sendable () throws -> Void] = []
    private var pending = 0
    private var running = false
    private var firstError: (any Error)?

    /// Flushes `path` (when there is one), then runs `after`.
    func then(sync path: String?, _ after: @escaping @Sendable () throws -> Void) {
        signal.lock()
        defer { signal.unlock() }
        work.append {
            if let path { try ShardWriter.sync(path: path) }
            try after()
        }
        pending += 1
        if !running {
            running = true
            Thread { self.drain() }.start()
        }
    }

    private func drain() {
        signal.lock()
        while !work.isEmpty {
            let next = work.removeFirst()
            signal.unlock()
            var failure: (any Error)?
            do { try next() } catch { failure = error }
            signal.lock()
            pending -= 1
            if firstError == nil { firstError = failure }
            signal.broadcast()
        }
        running = false
        signal.unlock()
    }

    /// Waits for everything asked so far; the first failure, if any.
    func wait() -> (any Error)? {
        signal.lock()
        defer { signal.unlock() }
        while pending > 0 { signal.wait() }
        return firstError
    }
}

/// The tool's version, recorded in every manifest.
public enum DallageVersion {
    public static let current = "0.1.0"
}
