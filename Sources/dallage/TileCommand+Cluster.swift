import ArgumentParser
import Foundation
import Logging
import Pyramid
import Tiler

/// The cluster protocol of `dallage tile` (DESIGN.md, "Cluster protocol"): `--plan-out` writes
/// the plan, `--plan … --worker I/N` builds a share of its deepest bands, `--plan … --finish`
/// builds the bands above and writes the manifest.
extension TileCommand {
    /// `--plan-out FILE`: plans as a build would and writes the plan, building nothing.
    func writePlan(to path: String, definition: TilesetDefinition, options: TileOptions, logger: Logger) throws {
        guard !resume, !dryRun else {
            throw ValidationError("--plan-out plans and stops: it takes neither --resume nor --dry-run")
        }
        var options = options
        // Workers run elsewhere and from other folders: they must find the same store.
        options.store = try Self.planStore(options.store)
        let made: (plan: ClusterPlan, summary: TilingSummary)
        do {
            made = try Tiler(definition: definition, options: options, logger: logger).makePlan()
            try made.plan.write(to: path)
        } catch {
            logger.error("\(error)")
            throw ExitCode(2)
        }
        let p = made.plan
        print(Self.report(made.summary, definition: definition, dryRun: true, store: options.store))
        print(
            "  plan \(p.id): \(p.jobCount) shard(s) of the deepest band(s) for the workers, "
                + "estimated work \(String(format: "%.1f", Double(p.totalWork) / 1e6)) Mpx; written to \(path)")
        print("  next: dallage tile --plan \(path) --worker I/N (each of N workers), then --plan \(path) --finish")
    }

    /// `--plan FILE` with `--worker` or `--finish`.
    func runPlan(logger: Logger) throws {
        guard let planPath = plan else {
            let flag = worker != nil ? "--worker" : finish ? "--finish" : "--workers"
            throw ValidationError("\(flag) needs --plan FILE (written by `dallage tile … --plan-out FILE`)")
        }
        guard planOut == nil else { throw ValidationError("--plan runs a plan and --plan-out writes one: give one") }
        guard !dryRun else { throw ValidationError("--plan takes no --dry-run (see the plan with --plan-out)") }
        if finishIfLast && worker == nil {
            throw ValidationError("--finish-if-last goes with --worker (a worker that may end last)")
        }
        if workers != nil && worker != "auto" {
            throw ValidationError("--workers goes with --worker auto (--worker I/N already says N)")
        }
        let role: ClusterRun.Role
        switch (worker, finish) {
        case (nil, false): throw ValidationError("--plan needs --worker I/N (or auto) or --finish")
        case (.some, true): throw ValidationError("--worker and --finish are separate runs: give one")
        case (nil, true): role = .finish
        case (.some(let text), false):
            do {
                role = .worker(
                    text == "auto"
                        ? try WorkerShare.automatic(environment: ProcessInfo.processInfo.environment, workers: workers)
                        : try WorkerShare(parsing: text))
            } catch {
                throw ValidationError("\(error)")
            }
        }
        let plan: ClusterPlan
        do { plan = try ClusterPlan.load(path: planPath) } catch {
            throw ValidationError("\(error)")
        }
        try checkAgainst(plan)

        var options = TileOptions(store: plan.store, tmsDirectory: tmsDirectory ?? defaultTMSDirectory())
        if let threads { options.threads = max(1, threads) }
        options.staging = staging
        options.keepGoing = keepGoing
        options.cacheMB = cacheMB
        let run = ClusterRun(plan: plan, role: role)
        options.cluster = run
        let summary: TilingSummary
        do {
            summary = try Tiler(definition: plan.tileset, options: options, logger: logger).run()
        } catch {
            logger.error("\(error)")
            throw ExitCode(2)
        }
        if let share = run.share {
            let built = summary.grids.reduce(0) { $0 + $1.shardsBuilt }
            let failed = summary.grids.reduce(0) { $0 + $1.failed.count }
            let pixels = summary.grids.reduce(0) { $0 + $1.pixelsRead }
            print(
                "worker \(share) of plan \(plan.id): \(run.assignedCount) shard(s) in its share: \(built) built, "
                    + "\(max(0, run.assignedCount - built - failed)) done before, \(failed) failed; "
                    + "\(String(format: "%.1f", Double(pixels) / 1e6)) Mpx read in \(Progress.duration(summary.seconds))"
            )
            for g in summary.grids { for f in g.failed { print("  FAILED shard \(g.grid) \(f)") } }
        } else {
            print(Self.report(summary, definition: plan.tileset, dryRun: false, store: plan.store))
        }
        let failed = summary.grids.reduce(0) { $0 + $1.failed.count }
        if failed > 0 || !summary.skipped.isEmpty {
            if !keepGoing { throw ExitCode(1) }
            return
        }
        if finishIfLast { try finishIfLast(plan: plan, options: options, logger: logger) }
    }

    /// `--worker … --finish-if-last`, once the share is built and recorded: if every job of the plan
    /// is recorded now, this worker ended last and finishes as `--finish` would, at once (not when
    /// a scheduler releases the finisher job's dependency). Else one line, and exit 0: a worker
    /// still at work finishes, or the finisher job. Two workers ending together both find every
    /// shard built: one switches the manifest, the other waits for it (folder store: the build
    /// lock) or loses the bucket's compare-and-swap to this plan's very generation, and says so.
    private func finishIfLast(plan: ClusterPlan, options: TileOptions, logger: Logger) throws {
        var options = options
        var run = ClusterRun(plan: plan, role: .finish)
        run.finishIfLast = true
        options.cluster = run
        let summary: TilingSummary
        do {
            summary = try Tiler(definition: plan.tileset, options: options, logger: logger).run()
        } catch let notReady as ClusterNotReady {
            logger.info("\(notReady)")
            print("plan \(plan.id): \(notReady)")
            return
        } catch {
            logger.error("finishing plan \(plan.id) after this worker's share: \(error)")
            throw ExitCode(2)
        }
        print(Self.report(summary, definition: plan.tileset, dryRun: false, store: plan.store))
        let failed = summary.grids.reduce(0) { $0 + $1.failed.count }
        if (failed > 0 || !summary.skipped.isEmpty) && !keepGoing { throw ExitCode(1) }
    }

    /// A worker or finisher takes the tileset, its settings, the grids and the store from the
    /// plan. Flags that say them too must say the same: a worker started with another quality
    /// or store would build shards that belong to no plan.
    private func checkAgainst(_ plan: ClusterPlan) throws {
        guard !resume else { throw ValidationError("--plan resumes by itself: drop --resume") }
        if let store {
            let given = try Self.planStore(store)
            guard given == plan.store else {
                throw ValidationError(
                    "--store \(store) is not the plan's store \(plan.store): drop --store or make a new plan")
            }
        }
        let settingsGiven =
            tileset != nil || id != nil || !sources.isEmpty || !grids.isEmpty || layer != nil || vintage != nil
            || format != nil || quality != nil || minZoom != nil || maxZoom != nil
        if settingsGiven {
            let asked = try makeDefinition(base: plan.tileset)
            let differing = try Self.differingFields(asked, plan.tileset)
            guard differing.isEmpty else {
                throw ValidationError(
                    "the tileset settings given differ from plan \(plan.id)'s in \(differing.joined(separator: ", ")): drop them (the plan has them) or make a new plan"
                )
            }
        }
        if let tmsDirectory {
            let catalog = try TileMatrixSetCatalog.load(directory: tmsDirectory)
            for g in plan.grids where catalog.grid(g.id)?.tms != g.tileMatrixSet {
                throw ValidationError(
                    "grid \(g.id) in \(tmsDirectory) differs from the one plan \(plan.id) was made with: drop --tms-dir (the plan has its grids) or make a new plan"
                )
            }
        }
    }

    /// A store as a plan records it and a worker compares it: a folder made absolute (workers start
    /// in other folders), an `s3://` URL in its normal form.
    static func planStore(_ text: String) throws -> String {
        let name = try storeName(text)
        guard case .folder(let path) = try? StoreLocation(parsing: name) else { return name }
        return URL(fileURLWithPath: path).standardizedFileURL.path
    }

    /// The top-level JSON fields in which two tileset definitions differ.
    static func differingFields(_ a: TilesetDefinition, _ b: TilesetDefinition) throws -> [String] {
        func fields(_ d: TilesetDefinition) throws -> [String: Any] {
            (try JSONSerialization.jsonObject(with: try JSONEncoder().encode(d)) as? [String: Any]) ?? [:]
        }
        let (x, y) = (try fields(a), try fields(b))
        return Set(x.keys).union(y.keys).sorted().filter { key in
            switch (x[key], y[key]) {
            case (nil, nil): false
            case (let u?, let v?):
                (try? JSONSerialization.data(withJSONObject: [u], options: .sortedKeys))
                    != (try? JSONSerialization.data(withJSONObject: [v], options: .sortedKeys))
            default: true
            }
        }
    }
}
