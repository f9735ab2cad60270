import Coverage
import Foundation
import GeoGrid
import Logging
import NIOCore
import Pyramid
import Raster
import Render
import Synchronization

/// What a client posts to `/api/extracts` (and what `dallage extract` builds).
public struct ExtractRequest: Codable, Sendable {
    public var tileset: String
    /// A GeoJSON Polygon/MultiPolygon (or a Feature holding one); WGS84 unless its `crs` member says otherwise.
    public var geometry: JSONValue?
    /// A territory instead of a geometry: `commune:59350`.
    public var territory: String?
    public var bufferM: Double?
    /// Output CRS (default EPSG:2154).
    public var crs: String?
    /// Output pixel size in metres (default: the pyramid's native resolution).
    public var resolution: Double?
    public var format: ExtractFormat?
    /// For a layer of vintages: one vintage (`2024-05`), or `latest` (the default), the stacked
    /// view. Recorded in the file either way.
    public var vintage: String?

    enum CodingKeys: String, CodingKey {
        case tileset, geometry, territory, crs, resolution, format, vintage
        case bufferM = "buffer_m"
    }

    public init(
        tileset: String, geometry: JSONValue? = nil, territory: String? = nil, bufferM: Double? = nil,
        crs: String? = nil, resolution: Double? = nil, format: ExtractFormat? = nil, vintage: String? = nil
    ) {
        self.vintage = vintage
        self.tileset = tileset
        self.geometry = geometry
        self.territory = territory
        self.bufferM = bufferM
        self.crs = crs
        self.resolution = resolution
        self.format = format
    }
}

/// Plans extracts against the served pyramids, writes direct ones, and queues and runs the others.
public final class ExtractService: Sendable {
    let catalog: PyramidCatalog
    public let coverage: CoverageService
    public let jobs: any ExtractJobStore
    let gate: PublicationGate?
    public let settings: ExtractSettings
    /// Where finished jobs are kept: `settings.directory`, or a prefix in a bucket.
    public let results: any ExtractResultStore
    public let logger: Logger
    /// Who runs this service's jobs, as claims record it: host, process and a random part.
    public let worker: String
    /// Jobs asked to stop while running.
    private let cancelled = Mutex<Set<String>>([])

    public init(
        catalog: PyramidCatalog, coverage: CoverageService, jobs: any ExtractJobStore, gate: PublicationGate?,
        settings: ExtractSettings, results: (any ExtractResultStore)? = nil, logger: Logger
    ) {
        self.results = results ?? FolderExtractResults(directory: settings.directory)
        self.catalog = catalog
        self.coverage = coverage
        self.jobs = jobs
        self.gate = gate
        self.settings = settings
        self.logger = logger
        worker = Self.newWorkerName()
    }

    /// `host:pid:random`: tells apart two servers on one host, and two runs of one process id.
    static func newWorkerName() -> String {
        let host = ProcessInfo.processInfo.hostName
        return "\(host):\(getpid()):\(String(UInt32.random(in: .min ... .max), radix: 16))"
    }

    /// The pyramid extracts read: the one on `render_grid` (`preferredPyramid`).
    func pyramid(_ tileset: String) throws(ServingError) -> ServedPyramid {
        let all = catalog.pyramids(of: tileset)
        let preferred = preferredPyramid(
            among: all, setting: settings.renderGrid, grid: \.grid, crs: \.manifest.tileMatrixSet.crs)
        guard let p = preferred else {
            throw ServingError(.notFound, "unknown tileset '\(tileset)'")
        }
        return p
    }

    /// What an extract reads: a tileset's pyramid, or a layer's stacked view as the requester may
    /// see it; and what the file records of it.
    struct Reading {
        var source: any PyramidSource
        var manifest: PyramidManifest
        var metadata: [(key: String, value: String)]
        /// Checked against the request's area to name the vintages it really shows.
        var vintages: [(vintage: String, footprint: Geometry?)] = []
    }

    /// The tileset, one vintage of a layer, or a layer's stacked view (`latest`).
    func reading(_ r: ExtractRequest, admin: Bool) throws -> Reading {
        let wanted = r.vintage.flatMap { $0.isEmpty || $0 == "latest" ? nil : $0 }
        if let layer = catalog.layers[r.tileset] {
            if let wanted {
                guard let tileset = layer.tileset(vintage: wanted) else {
                    throw ServingError(
                        .badInput, locator: "vintage",
                        "layer '\(layer.id)' has no vintage '\(wanted)' (\((layer.vintages.map(\.vintage.text) + ["latest"]).joined(separator: ", ")))"
                    )
                }
                let p = try pyramid(tileset)
                return Reading(
                    source: p.source, manifest: p.manifest,
                    metadata: [("LAYER", layer.id), ("VINTAGE", wanted), ("TILESET", tileset)])
            }
            let grids = layer.stacks.values.map(\.newest)
            guard
                let grid = preferredPyramid(
                    among: grids, setting: settings.renderGrid, grid: \.grid, crs: \.manifest.tileMatrixSet.crs)?.grid,
                let stack = layer.stacks[grid]
            else { throw ServingError(.notFound, "layer '\(layer.id)' has no pyramid") }
            var members: [StackedSource.Member] = []
            var vintages: [(String, Geometry?)] = []
            for p in stack.pyramids {
                var clip: Geometry?
                if p.gated, !admin {
                    let published = gate?.perimeter(of: p.tileset) ?? Geometry.empty()
                    guard !published.isEmpty else { continue }
                    let crs = try SpatialReference(p.manifest.tileMatrixSet.crs)
                    let l93 = try SpatialReference(epsg: 2154)
                    clip =
                        crs.isSame(as: l93)
                        ? published : try published.transformed(CoordinateTransform(from: l93, to: crs))
                }
                members.append(StackedSource.Member(pyramid: p, clip: clip))
                var footprint = try p.source.tiledFootprint()
                if let f = footprint, p.gated, !admin {
                    footprint = try f.intersection(gate?.perimeter(of: p.tileset) ?? Geometry.empty())
                }
                vintages.append((p.manifest.vintage?.text ?? p.tileset, footprint))
            }
            guard !members.isEmpty else { throw ServingError(.notFound, "nothing of layer '\(layer.id)' is published") }
            let source = StackedSource(stack: stack, members: members)
            return Reading(
                source: source, manifest: source.manifest, metadata: [("LAYER", layer.id), ("VINTAGE", "latest")],
                vintages: vintages)
        }
        let p = try pyramid(r.tileset)
        if let wanted, wanted != p.manifest.vintage?.text {
            throw ServingError(
                .badInput, locator: "vintage",
                p.manifest.vintage.map { "tileset '\(r.tileset)' is vintage \($0.text) only" }
                    ?? "tileset '\(r.tileset)' has no vintages")
        }
        var metadata: [(key: String, value: String)] = [("TILESET", r.tileset)]
        if let layer = p.manifest.layer { metadata.insert(("LAYER", layer), at: 0) }
        if let v = p.manifest.vintage { metadata.append(("VINTAGE", v.text)) }
        return Reading(source: p.source, manifest: p.manifest, metadata: metadata)
    }

    /// Checks a request and computes its output grid.
    public func plan(_ r: ExtractRequest, admin: Bool) async throws -> (ExtractPlan, any PyramidSource) {
        let reading = try reading(r, admin: admin)
        let m = reading.manifest
        var geometry: Geometry
        var geometryCRS = "EPSG:4326"
        if let t = r.territory {
            guard r.geometry == nil else { throw ServingError(.badInput, "give a geometry or a territory, not both") }
            guard let territory = try await coverage.store.territories(references: [t])[t] else {
                throw ServingError(.notFound, "unknown territory '\(t)'")
            }
            geometry = try Geometry.fromWKT(territory.wktL93)
            geometryCRS = "EPSG:2154"
        } else if var g = r.geometry {
            if g["type"] == .string("Feature"), let inner = g["geometry"] { g = inner }
            if case .string(let name) = g["crs"]?["properties"]?["name"] ?? .null { geometryCRS = name }
            do { geometry = try Geometry.fromGeoJSON(g.text) } catch {
                throw ServingError(.badInput, "geometry is not a GeoJSON Polygon or MultiPolygon")
            }
        } else {
            throw ServingError(.badInput, "give a geometry (GeoJSON) or a territory (commune:<INSEE>)")
        }
        let gridCRS = try SpatialReference(m.tileMatrixSet.crs)
        let native = m.tileMatrixSet.matrix(m.maxZoom)?.cellSize ?? 0.05
        let nativeMetres = gridCRS.isSame(as: try SpatialReference(epsg: 2154)) ? native : native * 0.7
        let coverageArea: Geometry
        if let footprint = try reading.source.tiledFootprint() {
            coverageArea = footprint
        } else {
            coverageArea = try Geometry.rectangle(m.bounds).transformed(
                CoordinateTransform(from: gridCRS, to: SpatialReference(epsg: 2154)))
        }
        var allowed: Geometry?
        // A stacked view is clipped per vintage in its pixels; a tileset here.
        if m.publish == .byStatus, !admin, !(reading.source is StackedSource) {
            allowed = gate?.perimeter(of: m.tileset) ?? Geometry.empty()
        }
        var plan = try Extractor.plan(
            tileset: r.tileset, geometry: geometry, geometryCRS: geometryCRS, bufferMetres: r.bufferM ?? 0,
            crs: r.crs ?? "EPSG:2154", resolution: r.resolution, format: r.format ?? .gtiff,
            nativeResolution: nativeMetres, coverage: coverageArea, allowed: allowed,
            limits: settings.limits)
        plan.metadata = reading.metadata
        if !reading.vintages.isEmpty {
            // The vintages the stacked view really shows in this area, newest first.
            let area = try Geometry.fromWKT(plan.polygonWKT).transformed(
                CoordinateTransform(from: SpatialReference(plan.crs), to: SpatialReference(epsg: 2154)))
            let shown = reading.vintages.filter { $0.footprint.map { $0.intersects(area) } ?? true }.map(\.vintage)
            plan.metadata.append(("VINTAGES", shown.joined(separator: ",")))
        }
        return (plan, reading.source)
    }

    /// True when the plan is small enough to answer at once.
    public func isDirect(_ plan: ExtractPlan) -> Bool { plan.pixels <= settings.limits.directPixels }

    /// Writes a direct extract to a temporary file and returns its path (the caller deletes it).
    /// `cancelled` is asked between strips of rows; when it answers true the writing stops.
    public func writeNow(
        _ plan: ExtractPlan, from source: any PyramidSource, cancelled: () -> Bool = { false }
    ) throws -> String {
        let dir = results.workDirectory
        do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
            throw storageFailure(error, writing: dir, bytes: plan.estimatedBytes) ?? unwritable(error, dir)
        }
        let path = dir + "/direct-\(UUID().uuidString).\(plan.format.fileExtension)"
        do {
            try Extractor.write(plan, pyramid: source, to: path) { _ in !cancelled() }
        } catch let e as ExtractError {
            throw e
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            if let refusal = storageFailure(error, writing: path, bytes: plan.estimatedBytes) { throw refusal }
            throw error
        }
        return path
    }

    /// The refusal for a failed write when the extracts folder is the cause (full, or not
    /// writable), nil when it is not. The path goes to the log only: clients never see the
    /// server's folders.
    public func storageFailure(_ error: any Error, writing path: String, bytes: Int) -> ServingError? {
        let dir = results.workDirectory
        var st = statvfs()
        guard statvfs(dir, &st) == 0, access(dir, W_OK) == 0 else { return unwritable(error, path) }
        let free = Double(st.f_bavail) * Double(st.f_frsize)
        // The estimate is rough (compression varies): count a margin of a quarter more.
        guard free < Double(bytes) * 1.25 + Double(Self.freeSpaceMargin) else { return nil }
        logger.error("no room to write the extract \(path) (\(Int(free) >> 20) MB free): \(error)")
        return ServingError(.insufficientStorage, "the server has no room left to store this extract; try again later")
    }

    /// Bytes kept free beside an extract's estimate.
    static let freeSpaceMargin = 64 << 20

    private func unwritable(_ error: any Error, _ path: String) -> ServingError {
        logger.error("cannot write the extract \(path): \(error)")
        return ServingError(.unavailable, "the server cannot store extracts now; try again later")
    }

    /// Queues a job, within the client's bounds; throws 429 beyond them. The bounds are checked
    /// and the job inserted in one database transaction, so servers sharing the database hold
    /// them together.
    public func enqueue(_ r: ExtractRequest, plan: ExtractPlan, client: String) async throws -> ExtractJob {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let job = ExtractJob(
            id: Self.newJobID(), client: client,
            request: String(decoding: try encoder.encode(r), as: UTF8.self), estimatedBytes: plan.estimatedBytes,
            at: Self.now())
        guard
            let (active, _) = try await jobs.insertJob(
                job, maxActive: settings.jobsPerClient, maxBytes: settings.bytesPerClient)
        else { return job }
        if active >= settings.jobsPerClient {
            throw ServingError(
                .tooMany,
                "\(active) extract(s) already queued or running for you (at most \(settings.jobsPerClient))"
            )
        }
        throw ServingError(
            .tooMany,
            "your kept extracts would exceed \(settings.bytesPerClient >> 20) MB; download or cancel some first"
        )
    }

    /// Cancels a queued or running job.
    public func cancel(_ id: String) async throws -> ExtractJob {
        guard var job = try await jobs.job(id: id) else { throw ServingError(.notFound, "no extract \(id)") }
        guard job.state == .queued || job.state == .running else {
            throw ServingError(.conflict, "extract \(id) is \(job.state.rawValue) and cannot be cancelled")
        }
        cancelled.withLock { _ = $0.insert(id) }
        job.state = .cancelled
        job.updatedAt = Self.now()
        try await jobs.updateJob(job)
        return job
    }

    /// 128 random bits in hex: a job's id cannot be guessed from another's.
    public static func newJobID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<2).map { _ in String(g.next() as UInt64, radix: 16).leftPadded(to: 16) }.joined()
    }

    /// The name of a job's result (`<id>.<ext>`), in the results' folder or under their prefix.
    public func resultName(_ job: ExtractJob) -> String {
        let format = (try? JSONDecoder().decode(ExtractRequest.self, from: Data(job.request.utf8)))?.format ?? .gtiff
        return "\(job.id).\(format.fileExtension)"
    }

    /// The local file a job is rendered to (for results in a folder, the result itself).
    public func resultPath(_ job: ExtractJob) throws -> String {
        results.renderPath(resultName(job))
    }

    static func now(_ d: Date = Date()) -> String { CoverageService.timestamp(d) }

    /// Runs queued jobs one at a time until cancelled, each claimed from the database so that
    /// of several servers on one database exactly one runs it; a job whose server stopped
    /// renewing its lease (killed mid-job) is claimed again once the lease expires. Also deletes
    /// expired results.
    public func runJobs() async {
        while !Task.isCancelled {
            await expire()
            do {
                if let next = try await jobs.claimNextJob(worker: worker, lease: settings.jobLease) {
                    await run(next)
                    continue
                }
            } catch {
                logger.error("cannot read the extract queue: \(error)")
            }
            // A new job is picked up within half a second; cancellation ends the sleep at once.
            try? await Task.sleep(for: .milliseconds(500))
        }
    }

    /// Renews the lease on a claimed job every third of it while the job runs; answers true when
    /// the job stopped being this server's (cancelled, or taken over after a lapse), having
    /// stopped its writing.
    private func keepLease(on id: String) -> Task<Bool, Never> {
        let lease = settings.jobLease
        return Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: lease / 3)
                if Task.isCancelled { break }
                do {
                    if try await !jobs.renewJobLease(id: id, worker: worker, lease: lease) {
                        cancelled.withLock { _ = $0.insert(id) }
                        return true
                    }
                } catch {
                    // The database may come back before the lease runs out: keep writing.
                    logger.warning("cannot renew the lease on extract \(id): \(error)")
                }
            }
            return false
        }
    }

    /// Runs a job this server claimed (it is `running` under this server's lease).
    func run(_ claimed: ExtractJob) async {
        var job = claimed
        logger.debug("extract \(job.id) claimed by \(worker)\(job.message.map { ": \($0)" } ?? "")")
        let lease = keepLease(on: job.id)
        do {
            let request = try JSONDecoder().decode(ExtractRequest.self, from: Data(job.request.utf8))
            let (plan, source) = try await plan(request, admin: false)
            let path = try resultPath(job)
            do {
                try FileManager.default.createDirectory(
                    atPath: results.workDirectory, withIntermediateDirectories: true)
            } catch {
                throw storageFailure(error, writing: path, bytes: job.estimatedBytes)
                    ?? unwritable(error, results.workDirectory)
            }
            let id = job.id
            let store = jobs
            let progressJob = job
            // The writing itself blocks: run it off the cooperative pool.
            // A shutdown stops the writing at the next strip; the job is queued again below.
            try await withTaskCancellationHandler {
                try await write(plan, source: source, path: path, job: progressJob, store: store)
            } onCancel: {
                _ = self.cancelled.withLock { $0.insert(id) }
            }
            // In a bucket: uploaded whole under its name, or not at all.
            let bytes: Int
            do { bytes = try await results.keep(resultName(job)) } catch {
                try? FileManager.default.removeItem(atPath: path)
                throw error
            }
            job.state = .done
            job.progress = 1
            job.bytes = bytes
            job.expiresAt = Self.now(Date().addingTimeInterval(settings.ttlSeconds))
            job.message = plan.repaired ? "the geometry was invalid and has been repaired" : nil
        } catch let e as ExtractError where e.kind == .cancelled {
            job.state = Task.isCancelled ? .queued : .cancelled
            if Task.isCancelled { job.message = "interrupted by a shutdown; will restart" }
        } catch  where error is ExtractError || error is ServingError {
            job.state = .failed
            job.message = "\(error)"
            logger.error("extract \(job.id) failed: \(error)")
        } catch  where Task.isCancelled {
            // A shutdown cut the upload of a finished result: the job runs again.
            job.state = .queued
            job.message = "interrupted by a shutdown; will restart"
            logger.info("extract \(job.id) interrupted by a shutdown: \(error)")
        } catch {
            // The reason is logged whole; the job tells the client no server path.
            job.state = .failed
            let path = (try? resultPath(job)) ?? results.workDirectory
            job.message =
                storageFailure(error, writing: path, bytes: job.estimatedBytes)?.message
                ?? "the extract failed on the server; try again later"
            logger.error("extract \(job.id) failed: \(error)")
        }
        lease.cancel()
        if await lease.value {
            // Cancelled meanwhile (its state says so already) or another server runs it now.
            cancelled.withLock { _ = $0.remove(job.id) }
            logger.info("extract \(job.id) is no longer this server's to run: left as the database has it")
            return
        }
        cancelled.withLock { _ = $0.remove(job.id) }
        job.updatedAt = Self.now()
        // Written from a task of its own: a shutdown cancelled this one, and the store refuses
        // a cancelled task's write (GRDB does), which left the job running under this server's
        // lease for another server to wait out, instead of queued again.
        let outcome = job
        let jobs = jobs
        await Task {
            var job = outcome
            if let current = try? await jobs.job(id: job.id), current.state == .cancelled { job.state = .cancelled }
            try? await jobs.updateJob(job)
        }.value
    }

    /// Writes on a thread of its own (the work blocks), reporting progress to the database.
    private func write(
        _ plan: ExtractPlan, source: any PyramidSource, path: String, job progressJob: ExtractJob,
        store: any ExtractJobStore
    ) async throws {
        let id = progressJob.id
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
            Thread.detachNewThread {
                var last = 0.0
                do {
                    try Extractor.write(plan, pyramid: source, to: path) { fraction in
                        if self.cancelled.withLock({ $0.contains(id) }) { return false }
                        if fraction - last >= 0.02 {
                            last = fraction
                            var p = progressJob
                            p.progress = fraction
                            p.updatedAt = Self.now()
                            let semaphore = DispatchSemaphore(value: 0)
                            Task {
                                // Never overwrite a cancellation made meanwhile.
                                if let current = try? await store.job(id: id), current.state == .running {
                                    try? await store.updateJob(p)
                                }
                                semaphore.signal()
                            }
                            semaphore.wait()
                        }
                        return true
                    }
                    c.resume()
                } catch {
                    c.resume(throwing: error)
                }
            }
        }
    }

    /// Deletes finished results past their expiry, and temporary files (zips of dalles, direct
    /// extracts a failed request left, with results in a bucket a result whose upload a killed
    /// server never finished) older than an hour.
    func expire() async {
        let dir = results.workDirectory
        let hourAgo = Date().addingTimeInterval(-3600)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            let path = dir + "/" + name
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
                let m = attributes[.modificationDate] as? Date, m < hourAgo
            else { continue }
            // Results left in a staging folder are files: a folder there may be another staging
            // folder (of a prefix below this one's).
            let leftResult = results.workFilesAreTemporary && attributes[.type] as? FileAttributeType == .typeRegular
            if name.hasPrefix("dalles-") || name.hasPrefix("direct-") || name.hasPrefix(".") || leftResult {
                try? FileManager.default.removeItem(atPath: path)
            }
        }
        guard let done = try? await jobs.jobs(in: [.done]) else { return }
        let now = Self.now()
        for var j in done where (j.expiresAt ?? now) < now {
            do { try await results.remove(resultName(j)) } catch {
                // Left done, so that the next pass deletes it: an expired job keeps nothing.
                logger.warning("cannot delete the expired extract \(j.id) from \(results): \(error)")
                continue
            }
            j.state = .expired
            j.updatedAt = now
            try? await jobs.updateJob(j)
            logger.info("extract \(j.id) expired: file deleted")
        }
    }
}

extension String {
    fileprivate func leftPadded(to count: Int) -> String {
        String(repeating: "0", count: max(0, count - self.count)) + self
    }
}
