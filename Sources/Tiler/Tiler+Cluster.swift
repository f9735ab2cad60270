import Foundation
import GeoGrid
import Pyramid
import Raster

extension Tiler {
    /// Plans a cluster build (`dallage tile … --plan-out FILE`): indexes the sources and plans
    /// every grid as a build would, and returns the plan (the deepest bands' shards with their
    /// estimated work) with the summary a dry run gives. Nothing is built; a folder store gets only
    /// its source index cache, an `s3://` store nothing (the cache stays in the staging folder; the
    /// plan records the endpoint reached, which workers and finisher must reach too).
    public func makePlan() throws -> (plan: ClusterPlan, summary: TilingSummary) {
        try openTarget()
        defer { target?.shutdown() }
        let prepared = try prepare()
        var grids: [ClusterPlan.Grid] = []
        for ((plan, update), asked) in zip(zip(prepared.plans, prepared.updates), prepared.grids) {
            let shards = update.rebuild.first ?? []
            let work = ClusterPlan.work(of: shards, plan: plan, usable: prepared.usable)
            grids.append(
                ClusterPlan.Grid(
                    id: asked.id, tileMatrixSet: plan.tms, minZoom: asked.minZoom, maxZoom: asked.maxZoom,
                    scheme: plan.scheme, base: update.base, generation: update.generation,
                    plan: Self.planID(settings: settings(plan), digest: prepared.index.digest, base: update.base),
                    settings: settings(plan), shardsPerBand: plan.shards.map(\.count),
                    reused: update.reuse.first?.count ?? 0,
                    jobs: zip(shards, work).map { ClusterPlan.Job(z: $0.z, col: $0.col, row: $0.row, work: $1) }))
        }
        let text = "\(definition.id)|\(prepared.index.digest)|" + grids.map(\.plan).joined(separator: ",")
        let plan = ClusterPlan(
            kind: ClusterPlan.kind, version: ClusterPlan.currentVersion,
            id: String(format: "%08x", Array(text.utf8).withUnsafeBytes { Deflate.crc32($0) }),
            tool: "dallage \(DallageVersion.current)", created: ISO8601DateFormatter().string(from: Date()),
            store: options.store, endpoint: target?.endpoint, tileset: definition,
            sources: ClusterPlan.sources(prepared.index), grids: grids)
        return (plan, prepared.summary)
    }

    /// Checks a worker's or the finisher's plan against the store before anything is written:
    /// the same dallage, each grid still at the generation the plan builds on (else another
    /// build switched it: the plan is stale), the plan agreeing with its own settings, and for
    /// the finisher every job of the deepest bands recorded as built. Returns the grids whose
    /// generation of this plan is already current (a rerun): those need nothing more.
    func preflight(_ cluster: ClusterRun, _ prepared: Prepared) throws -> Set<Int> {
        let plan = cluster.plan
        let tool = "dallage \(DallageVersion.current)"
        guard plan.tool == tool else {
            throw ClusterError(
                "plan \(plan.id) was made by \(plan.tool) and this is \(tool): run the workers and the finisher with the version that planned, or make a new plan"
            )
        }
        var finished = Set<Int>()
        var missing: [String] = []
        var missingCount = 0
        for (i, (gridPlan, update)) in zip(prepared.plans, prepared.updates).enumerated() {
            let g = plan.grids[i]
            let folder = PyramidFolder(directory(of: gridPlan))
            let remote = prepared.remotes[i]
            if update.base != g.base {
                if update.base == g.generation, let current = try folder.current(),
                    current.sourcesDigest == plan.sources.digest,
                    folder.sources(generation: g.generation)?.settings == g.settings
                {
                    logger.info(
                        "\(g.id): generation \(g.generation) of plan \(plan.id) is already current: nothing to do")
                    finished.insert(i)
                    continue
                }
                throw ClusterError(
                    "\(remote?.pyramid.url ?? folder.directory) is at generation \(update.base), but plan \(plan.id) builds generation \(g.generation) over \(g.base): another build switched it since the plan was made; make a new plan"
                )
            }
            let id = Self.planID(settings: settings(gridPlan), digest: prepared.index.digest, base: update.base)
            guard id == g.plan, g.settings == settings(gridPlan), gridPlan.scheme == g.scheme,
                Set(update.rebuild.first ?? []) == Set(g.jobs.map(\.coordinate))
            else {
                throw ClusterError(
                    "plan \(plan.id) does not agree with itself for grid \(g.id) (edited, or made from another store state): make a new plan"
                )
            }
            guard case .finish = cluster.role else { continue }
            let records = folder.records()
            let absent = g.jobs.filter { job in
                guard let r = records[job.coordinate], r.plan == g.plan else { return true }
                guard let path = r.path else { return false }
                // In a bucket, the listing of its shards; in a folder, the file.
                let size: Int? =
                    if let remote { remote.size(path) } else {
                        (try? FileManager.default.attributesOfItem(atPath: folder.path(path)))?[.size] as? Int
                    }
                return size != r.bytes
            }
            if !absent.isEmpty, let now = try folder.current(), now.generation == g.generation,
                now.sourcesDigest == plan.sources.digest
            {
                // Another finisher switched since this one read the manifest, and is clearing the
                // records: the plan's generation is current (a folder's manifest is read again here;
                // a bucket's was read after its records).
                logger.info(
                    "\(g.id): generation \(g.generation) of plan \(plan.id) is already current: nothing to do")
                finished.insert(i)
                continue
            }
            if let first = absent.first {
                missingCount += absent.count
                missing.append("\(g.id): \(absent.count) of \(g.jobs.count), e.g. \(first.coordinate)")
            }
        }
        if !missing.isEmpty {
            if cluster.finishIfLast { throw ClusterNotReady(missing: missingCount) }
            throw ClusterError(
                "cannot finish plan \(plan.id): \(missingCount) shard(s) of the deepest band are not built yet (\(missing.joined(separator: "; "))); run the workers that failed or have not run (a worker skips what is done), then --finish again"
            )
        }
        switch cluster.role {
        case .worker(let share):
            let percent = plan.totalWork > 0 ? 100 * Double(cluster.assignedWork) / Double(plan.totalWork) : 0
            logger.info(
                "worker \(share) of plan \(plan.id): \(cluster.assignedCount) of \(plan.jobCount) shard(s), \(String(format: "%.1f", percent))% of the estimated work"
            )
        case .finish:
            logger.info(
                "finishing plan \(plan.id): all \(plan.jobCount) shard(s) of the deepest band built; building the bands above"
            )
        }
        return finished
    }
}
