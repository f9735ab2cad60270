import Foundation
import GeoGrid
import Pyramid
import Raster

/// Why a plan cannot be written, or a worker or finisher cannot run it. Thrown before anything
/// is written to the store.
public struct ClusterError: Error, CustomStringConvertible, Sendable {
    public var description: String

    public init(_ description: String) { self.description = description }
}

/// A finish attempted by a worker (`--finish-if-last`) while other workers' shards are not built
/// yet: not an error, the last of them (or the finisher job) finishes.
public struct ClusterNotReady: Error, CustomStringConvertible, Sendable {
    /// Deepest-band shards of the plan not recorded yet.
    public var missing: Int

    public var description: String {
        "\(missing) shard(s) of other workers not built yet: the last worker or the finisher job will finish"
    }
}

/// The plan of one cluster build (`dallage tile … --plan-out plan.json`): everything a worker
/// needs to build its share without indexing the sources again, and the finisher to check that
/// every share is done. Workers on other machines must all see the same plan, so it fixes what
/// a build decides: the dalles (with their size and date, checked by every worker), the tileset
/// and its settings, the grids, the generation built on and the one made, and the deepest band's
/// shards with their estimated work, from which each worker computes the same balanced shares.
public struct ClusterPlan: Sendable, Codable, Equatable {
    /// What the file is, so another JSON file given as a plan is refused by name.
    public static let kind = "dallage-tile-plan"
    /// Bumped when the meaning of a field changes: a worker refuses a plan of another version.
    public static let currentVersion = 1

    /// One source dalle, as indexed when the plan was made (`SourceEntry` with its CRS given by
    /// a number in `Sources.crs`: thousands of dalles share two or three CRSs).
    public struct Dalle: Sendable, Codable, Equatable {
        public var path: String
        public var bytes: Int
        public var modified: Double
        /// Why the dalle is skipped; nil when usable.
        public var error: String?
        public var width: Int
        public var height: Int
        public var bands: Int
        public var geoTransform: [Double]
        /// Index in `Sources.crs`; nil for a skipped dalle without one.
        public var crs: Int?
        public var epsg: Int?
        public var overviews: Int
        public var blockWidth: Int
        public var blockHeight: Int
        public var bounds: BoundingBox
    }

    /// The dalles, as the source index had them.
    public struct Sources: Sendable, Codable, Equatable {
        /// `SourceIndex.digest` of the dalles (path, size, date): the shard records' plan ids and
        /// the manifest carry it.
        public var digest: String
        /// The CRSs (WKT) the dalles use.
        public var crs: [String]
        public var dalles: [Dalle]
    }

    /// A shard of a deepest band to build, with the work it is estimated to cost.
    public struct Job: Sendable, Codable, Hashable {
        public var z: Int
        public var col: Int
        public var row: Int
        /// Source pixels read plus pixels written at the deepest level: what a worker spends its
        /// time on. Shares are balanced on it.
        public var work: Int

        public var coordinate: TileCoordinate { TileCoordinate(z: z, col: col, row: row) }
    }

    /// One grid's part of the build.
    public struct Grid: Sendable, Codable, Equatable {
        /// The grid as asked (`2154_5cm`, or level-limited `2154_5cm_6_22`).
        public var id: String
        /// The whole tile matrix set, so workers do not depend on their `--tms-dir`.
        public var tileMatrixSet: TileMatrixSet
        /// The level limits of a level-limited grid id.
        public var minZoom: Int?
        public var maxZoom: Int?
        public var scheme: ShardScheme
        /// The generation the build starts from (0: none yet) and the one it makes.
        public var base: Int
        public var generation: Int
        /// The id the shard records of this build carry.
        public var plan: String
        /// Every setting that decides the bytes (grid, levels, format, quality, resamplings).
        public var settings: String
        /// Shards planned per band, deepest first; of the deepest band, those kept from the base
        /// generation as they are.
        public var shardsPerBand: [Int]
        public var reused: Int
        /// The deepest band's shards to build: the workers' jobs.
        public var jobs: [Job]
    }

    public var kind: String
    public var version: Int
    /// Names the whole plan (its grids' ids): logs of workers and finisher quote it.
    public var id: String
    public var tool: String
    public var created: String
    /// The store the pyramids go to, as the workers must reach it (a local folder made absolute,
    /// or `s3://bucket/prefix`).
    public var store: String
    /// For an `s3://` store, the endpoint it was reached at when planning: a worker whose
    /// `AWS_ENDPOINT_URL` (or `AWS_REGION`) leads elsewhere would fill another store's bucket.
    public var endpoint: String? = nil
    public var tileset: TilesetDefinition
    public var sources: Sources
    public var grids: [Grid]

    /// The plan's jobs over every grid.
    public var jobCount: Int { grids.reduce(0) { $0 + $1.jobs.count } }
    public var totalWork: Int { grids.reduce(0) { $0 + $1.jobs.reduce(0) { $0 + $1.work } } }

    // MARK: Sources

    /// Packs a source index for the plan.
    static func sources(_ index: SourceIndex) -> Sources {
        var crs: [String] = []
        var crsIndex: [String: Int] = [:]
        let dalles = index.entries.map { e -> Dalle in
            var n: Int?
            if !e.crsWKT.isEmpty {
                n = crsIndex[e.crsWKT]
                if n == nil {
                    n = crs.count
                    crsIndex[e.crsWKT] = crs.count
                    crs.append(e.crsWKT)
                }
            }
            return Dalle(
                path: e.path, bytes: e.fileSize, modified: e.modified, error: e.error, width: e.width,
                height: e.height, bands: e.bands, geoTransform: e.geoTransform, crs: n, epsg: e.epsg,
                overviews: e.overviews, blockWidth: e.blockWidth, blockHeight: e.blockHeight, bounds: e.bounds)
        }
        return Sources(digest: index.digest, crs: crs, dalles: dalles)
    }

    /// The source index the plan was made from, after checking that every dalle still has the
    /// size and date it had then: a worker building from changed dalles would make shards that
    /// match neither the plan nor each other.
    func verifiedSources() throws -> SourceIndex {
        var entries: [SourceEntry] = []
        var changed: [String] = []
        for d in sources.dalles {
            var e = SourceEntry(path: d.path, fileSize: d.bytes, modified: d.modified)
            e.error = d.error
            e.width = d.width
            e.height = d.height
            e.bands = d.bands
            e.geoTransform = d.geoTransform
            if let n = d.crs {
                guard sources.crs.indices.contains(n) else {
                    throw ClusterError("the plan is damaged: dalle \(d.path) names CRS \(n) of \(sources.crs.count)")
                }
                e.crsWKT = sources.crs[n]
            }
            e.epsg = d.epsg
            e.overviews = d.overviews
            e.blockWidth = d.blockWidth
            e.blockHeight = d.blockHeight
            e.bounds = d.bounds
            entries.append(e)
            // A dalle in object storage (`/vsis3/…`) is asked of GDAL, a file of the file system.
            let (size, mtime) = SourceIndex.fileState(d.path)
            let exists = size >= 0
            if size != d.bytes || mtime != d.modified {
                let what =
                    !exists ? "missing" : size != d.bytes ? "\(d.bytes) → \(size) bytes" : "modified since"
                changed.append("\((d.path as NSString).lastPathComponent) (\(what))")
            }
        }
        if !changed.isEmpty {
            throw ClusterError(
                "\(changed.count) source dalle(s) changed on disk since plan \(id) was made (\(changed.prefix(3).joined(separator: ", "))\(changed.count > 3 ? ", …" : "")): make a new plan with --plan-out"
            )
        }
        let index = SourceIndex(entries: entries)
        guard index.digest == sources.digest else {
            throw ClusterError("the plan is damaged: its dalles do not give its sources digest \(sources.digest)")
        }
        return index
    }

    // MARK: Work

    /// Estimated work of each shard of a deepest band: the source pixels inside it (each dalle
    /// counted for the part of its footprint the shard covers) plus the pixels of the deepest
    /// level it covers. A shard at the edge of the area, or over one dalle of a tranche, costs a
    /// fraction of a full one: counting shards would leave one worker with all the full ones.
    static func work(of shards: [TileCoordinate], plan: GridPlan, usable: [SourceEntry]) -> [Int] {
        let tms = plan.tms
        let index = RectIndex(plan.footprints.enumerated().map { ($1, $0) })
        let cell = tms.tileMatrices[plan.scheme.maxZoom].cellSize
        return shards.map { shard in
            let box = tms.bounds(of: shard)
            var work = 0.0
            for i in index.query(box) {
                let f = plan.footprints[i]
                guard let part = f.intersection(box), f.width > 0, f.height > 0 else { continue }
                let area = part.width * part.height
                work += Double(usable[i].width) * Double(usable[i].height) * area / (f.width * f.height)
                work += area / (cell * cell)
            }
            return max(1, Int(bounded: work, .up))
        }
    }

    /// The jobs of each worker when `workers` share the plan: longest processing time first
    /// (jobs by decreasing work, each to the least loaded worker, ties to the lowest index),
    /// deterministic so every worker computes the same shares without talking to the others.
    /// Per worker, (grid index, job index) pairs.
    public func shares(workers: Int) -> [[(grid: Int, job: Int)]] {
        var all: [(grid: Int, job: Int, work: Int)] = []
        for (g, grid) in grids.enumerated() {
            for (j, job) in grid.jobs.enumerated() { all.append((g, j, job.work)) }
        }
        all.sort { ($1.work, $0.grid, $0.job) < ($0.work, $1.grid, $1.job) }
        var out = [[(grid: Int, job: Int)]](repeating: [], count: workers)
        // A binary min-heap of (load, worker): the next job goes to its top.
        var heap = (0..<workers).map { (load: 0, worker: $0) }
        func less(_ a: (load: Int, worker: Int), _ b: (load: Int, worker: Int)) -> Bool {
            (a.load, a.worker) < (b.load, b.worker)
        }
        for item in all {
            out[heap[0].worker].append((item.grid, item.job))
            heap[0].load += item.work
            var i = 0
            while true {
                let l = 2 * i + 1
                let r = l + 1
                var m = i
                if l < heap.count, less(heap[l], heap[m]) { m = l }
                if r < heap.count, less(heap[r], heap[m]) { m = r }
                if m == i { break }
                heap.swapAt(i, m)
                i = m
            }
        }
        return out
    }

    // MARK: File

    /// Reads a plan file, refusing what is not a plan of this version.
    public static func load(path: String) throws -> ClusterPlan {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ClusterError("cannot read the plan \(path): \((error as NSError).localizedDescription)")
        }
        struct Header: Decodable {
            var kind: String?
            var version: Int?
        }
        guard let header = try? JSONDecoder().decode(Header.self, from: data), header.kind == kind else {
            throw ClusterError("\(path) is not a dallage tile plan (write one with `dallage tile … --plan-out FILE`)")
        }
        guard header.version == currentVersion else {
            throw ClusterError(
                "\(path) is a plan of version \(header.version.map(String.init) ?? "?"); this dallage reads version \(currentVersion): make the plan again with this version"
            )
        }
        do {
            return try JSONDecoder().decode(ClusterPlan.self, from: data)
        } catch {
            throw ClusterError("the plan \(path) is damaged: \(error)")
        }
    }

    /// The plan as JSON (keys sorted: two plans of the same build compare as text).
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    /// Writes the plan through a temporary name and a rename: a worker started meanwhile reads
    /// the old plan or the new one, never half of one.
    public func write(to path: String) throws {
        let url = URL(fileURLWithPath: path)
        do { try encoded().write(to: url, options: .atomic) } catch {
            throw ClusterError("cannot write the plan \(path): \((error as NSError).localizedDescription)")
        }
    }
}

/// Share `index` (0-based) of `count` workers, from `--worker I/N` or `--worker auto`.
public struct WorkerShare: Sendable, Hashable, CustomStringConvertible {
    public var index: Int
    public var count: Int

    /// Upper bound on the number of workers: a typo must not make a million-entry table.
    public static let maxCount = 100_000

    public init(index: Int, count: Int) throws {
        guard (1...Self.maxCount).contains(count) else {
            throw ClusterError("the number of workers must be 1…\(Self.maxCount), not \(count)")
        }
        guard (0..<count).contains(index) else {
            throw ClusterError("worker index \(index) is out of range for \(count) worker(s) (0…\(count - 1))")
        }
        self.index = index
        self.count = count
    }

    /// `I/N` as written on the command line.
    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let i = Int(parts[0]), let n = Int(parts[1]) else {
            throw ClusterError("--worker takes I/N (share I, from 0, of N workers) or auto, not '\(text)'")
        }
        try self.init(index: i, count: n)
    }

    /// The share a scheduler gave this task (`--worker auto`): a Slurm array task
    /// (I = SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN, N = SLURM_ARRAY_TASK_COUNT; `workers`, if
    /// given, must agree), or a Kubernetes Indexed Job's pod (I = JOB_COMPLETION_INDEX, N =
    /// `workers`, which the environment does not give).
    public static func automatic(environment: [String: String], workers: Int?) throws -> WorkerShare {
        func integer(_ name: String) throws -> Int {
            guard let text = environment[name], let n = Int(text) else {
                throw ClusterError("--worker auto under Slurm needs \(name), an integer (is this an array job?)")
            }
            return n
        }
        if environment["SLURM_ARRAY_TASK_ID"] != nil {
            let id = try integer("SLURM_ARRAY_TASK_ID")
            let min = try integer("SLURM_ARRAY_TASK_MIN")
            let count = try integer("SLURM_ARRAY_TASK_COUNT")
            if let step = environment["SLURM_ARRAY_TASK_STEP"], step != "1" {
                throw ClusterError(
                    "--worker auto needs a Slurm array without a step (--array=0-\(count - 1)), this one steps by \(step)"
                )
            }
            if let workers, workers != count {
                throw ClusterError(
                    "--workers \(workers) disagrees with the Slurm array's \(count) task(s) (SLURM_ARRAY_TASK_COUNT): give the same number or leave --workers out"
                )
            }
            return try WorkerShare(index: id - min, count: count)
        }
        if let text = environment["JOB_COMPLETION_INDEX"] {
            guard let index = Int(text) else {
                throw ClusterError("JOB_COMPLETION_INDEX is '\(text)', not an integer")
            }
            guard let workers else {
                throw ClusterError(
                    "--worker auto in a Kubernetes Indexed Job needs --workers N (the Job's completions)")
            }
            return try WorkerShare(index: index, count: workers)
        }
        throw ClusterError(
            "--worker auto found neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX (a Kubernetes Indexed Job): give --worker I/N"
        )
    }

    public var description: String { "\(index)/\(count)" }
}

/// A tiling run under a plan: a worker building its share of the deepest bands, or the finisher.
public struct ClusterRun: Sendable {
    /// What this process does with the plan.
    public enum Role: Sendable, Hashable {
        case worker(WorkerShare)
        case finish
    }

    public let plan: ClusterPlan
    public let role: Role
    /// For the finisher: run by the worker that ended last (`--worker … --finish-if-last`), not by
    /// a finisher job. Shards still missing are then no error (`ClusterNotReady`: another worker is
    /// still at work, and it or the finisher job finishes); another finisher holding the pyramid's
    /// build lock is waited for, and its switch to this plan's generation is this run's success.
    /// Into a bucket it stages in a folder of its own: two last workers on one host do not share one.
    public var finishIfLast = false
    /// For a worker, per tile matrix set id, the deepest band's shards of its share.
    let assigned: [String: Set<TileCoordinate>]?
    /// For a worker, the estimated work of its share.
    public let assignedWork: Int

    public init(plan: ClusterPlan, role: Role) {
        self.plan = plan
        self.role = role
        guard case .worker(let share) = role else {
            assigned = nil
            assignedWork = 0
            return
        }
        var mine: [String: Set<TileCoordinate>] = [:]
        var work = 0
        for (g, j) in plan.shares(workers: share.count)[share.index] {
            let job = plan.grids[g].jobs[j]
            mine[plan.grids[g].tileMatrixSet.id, default: []].insert(job.coordinate)
            work += job.work
        }
        assigned = mine
        assignedWork = work
    }

    /// The worker's share, nil for the finisher.
    public var share: WorkerShare? {
        if case .worker(let s) = role { return s }
        return nil
    }

    /// Shards of the share, over all grids.
    public var assignedCount: Int { assigned?.values.reduce(0) { $0 + $1.count } ?? 0 }
}
