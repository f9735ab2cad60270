import ArgumentParser
import Foundation
import Pyramid
import Raster
import Tiler

struct TileCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tile",
        abstract: "Cut source dalles into grid-aligned COG pyramids.",
        discussion: """
            With a tileset file:   dallage tile --tileset tilesets/demo.yaml --store store
            Without one:           dallage tile SOURCE... --id ID --tms 2154_5cm --tms PM --store store
            On a cluster:          dallage tile --tileset T.yaml --store /shared/store --plan-out plan.json
                                   dallage tile --plan plan.json --worker I/N [--finish-if-last]
                                                                   (each of N workers, I from 0; the last to end finishes)
                                   dallage tile --plan plan.json --finish         (once all workers are done)
            """)

    @Argument(help: "Source dalles, folders or glob patterns (when no --tileset is given).")
    var sources: [String] = []

    @Option(help: "Tileset definition (YAML).") var tileset: String?
    @Option(help: "Tileset id (without --tileset).") var id: String?
    @Option(
        help:
            "Store: a folder, or s3://bucket/prefix (endpoint and credentials from the AWS_* variables; default: store)."
    )
    var store: String?
    @Option(help: "With an s3:// store, the folder shards are built in before upload (default: TMPDIR).")
    var staging: String?
    @Option(name: .customLong("tms"), help: "Grid to build (repeatable): 2154_5cm, PM, 2154_10cm, or G_a_b.")
    var grids: [String] = []
    @Option(help: "Layer this tileset is a vintage of (with --vintage).") var layer: String?
    @Option(help: "Vintage (millésime): ISO 8601 year, month or date, e.g. 2024 or 2024-05.") var vintage: String?
    @Option(help: "Tile format: jpeg or webp.") var format: String?
    @Option(help: "Encoder quality 1…100.") var quality: Int?
    @Option(name: .customLong("min-zoom")) var minZoom: Int?
    @Option(name: .customLong("max-zoom"), help: "Deepest level (default: from the source resolution).")
    var maxZoom: Int?
    @Option(help: "Worker threads (default: all cores).") var threads: Int?
    @Option(
        name: .customLong("cache-mb"),
        help:
            "GDAL block cache in MB. Tiled dalles are read about once, so little is needed; raise it for strip-organised dalles."
    ) var cacheMB = 48
    @Option(name: .customLong("tms-dir"), help: "Folder of OGC TMS 2.0 JSON grids.") var tmsDirectory: String?
    @Flag(help: "Continue an interrupted run from its shard records, redoing only unfinished shards.") var resume =
        false
    @Flag(name: .customLong("dry-run"), help: "Print the plan and what changed since the current generation, and stop.")
    var dryRun = false
    @Flag(name: .customLong("keep-going"), help: "Exit 0 even when dalles or shards were skipped.")
    var keepGoing = false
    @Option(
        name: .customLong("plan-out"),
        help: "Write the plan of a cluster build to this file and stop (then --plan with --worker, --finish).")
    var planOut: String?
    @Option(help: "Run a cluster build's plan (from --plan-out), with --worker or --finish.") var plan: String?
    @Option(
        help:
            "With --plan: build share I (from 0) of N workers (I/N), or auto: from a Slurm array task or a Kubernetes Indexed Job (with --workers)."
    ) var worker: String?
    @Option(
        help:
            "With --worker auto: the number of workers (required in Kubernetes; under Slurm it must equal the array's)."
    ) var workers: Int?
    @Flag(help: "With --plan: check every worker's shards are built, build the bands above and write the manifest.")
    var finish = false
    @Flag(
        name: .customLong("finish-if-last"),
        help:
            "With --worker: once the share is done, finish the plan here if every worker's shards are now built (else exit 0, leaving it to the last worker or --finish)."
    )
    var finishIfLast = false

    func run() throws {
        let logger = makeLogger("dallage.tile")
        if plan != nil || worker != nil || finish || workers != nil || finishIfLast {
            try runPlan(logger: logger)
            return
        }
        let definition = try makeDefinition()
        let store = try storeName(self.store ?? "store")
        var options = TileOptions(store: store, tmsDirectory: tmsDirectory ?? defaultTMSDirectory())
        if let threads { options.threads = max(1, threads) }
        options.resume = resume
        options.dryRun = dryRun
        options.keepGoing = keepGoing
        options.cacheMB = cacheMB
        options.staging = staging
        if let planOut {
            try writePlan(to: planOut, definition: definition, options: options, logger: logger)
            return
        }

        let summary: TilingSummary
        do {
            summary = try Tiler(definition: definition, options: options, logger: logger).run()
        } catch {
            logger.error("\(error)")
            throw ExitCode(2)
        }
        print(Self.report(summary, definition: definition, dryRun: dryRun, store: store))
        let failed = summary.grids.reduce(0) { $0 + $1.failed.count }
        if (failed > 0 || !summary.skipped.isEmpty) && !keepGoing { throw ExitCode(1) }
    }

    /// The tileset from `--tileset` or the sources and `--id`, with the flags that override its
    /// settings applied; `base` (a plan's tileset) stands in when neither is given.
    func makeDefinition(base: TilesetDefinition? = nil) throws -> TilesetDefinition {
        var definition: TilesetDefinition
        do {
            if let tileset {
                definition = try TilesetDefinition.load(path: tileset)
                if !sources.isEmpty { definition.sources = sources }
            } else if let base, id == nil, sources.isEmpty {
                definition = base
            } else {
                guard let id else { throw ValidationError("give --tileset FILE, or sources with --id ID") }
                guard !sources.isEmpty else { throw ValidationError("no source given") }
                definition = TilesetDefinition(id: id, sources: sources)
            }
            if !grids.isEmpty { definition.grids = grids }
            if let format {
                guard let f = TileFormat(rawValue: format) else {
                    throw ValidationError("unknown format '\(format)' (jpeg, webp)")
                }
                definition.format = f
            }
            if let layer { definition.layer = layer }
            if let vintage {
                guard let v = Vintage(vintage) else {
                    throw ValidationError(
                        "vintage '\(vintage)' is not an ISO 8601 year, month or date (YYYY, YYYY-MM or YYYY-MM-DD)")
                }
                definition.vintage = v
            }
            if let quality { definition.quality = quality }
            if let minZoom { definition.minZoom = minZoom }
            if let maxZoom { definition.maxZoom = maxZoom }
            try definition.validate()
        } catch let e as TilerError {
            throw ValidationError(e.description)
        }
        return definition
    }

    /// What a build does to one grid's pyramid: the dalles that changed since its current
    /// generation and the shards rebuilt and reused.
    static func describe(_ u: GridUpdate, dryRun: Bool) -> [String] {
        var out: [String] = []
        let verb = dryRun ? "would make" : "makes"
        if u.fullReason == nil, u.rebuildCount == 0, u.dropped == 0, u.added.isEmpty, u.changed.isEmpty,
            u.removed.isEmpty
        {
            out.append(
                "  \(u.grid): no dalle changed since generation \(u.base); \(u.reuseCount) shard(s) kept as they are")
            return out
        }
        if let reason = u.fullReason {
            out.append(
                "  \(u.grid): \(verb) generation \(u.generation), building all \(u.rebuildCount) shard(s): \(reason)")
            return out
        }
        out.append(
            "  \(u.grid): \(verb) generation \(u.generation) over \(u.base): dalles \(u.added.count) added, "
                + "\(u.changed.count) changed, \(u.removed.count) removed; shards \(u.rebuildCount) to build, "
                + "\(u.reuseCount) reused, \(u.dropped) dropped")
        for (label, names) in [("added", u.added), ("changed", u.changed), ("removed", u.removed)] where !names.isEmpty
        {
            let shown = names.prefix(10).joined(separator: ", ")
            out.append("    \(label): \(shown)\(names.count > 10 ? ", … (\(names.count - 10) more)" : "")")
        }
        return out
    }

    static func report(_ s: TilingSummary, definition: TilesetDefinition, dryRun: Bool, store: String) -> String {
        var out: [String] = []
        out.append(
            "\(definition.id): \(s.sources) source dalle(s), \(String(format: "%.1f", Double(s.sourcePixels) / 1e6)) Mpx"
        )
        for plan in s.plans {
            let z = "z\(plan.scheme.minZoom)–\(plan.scheme.maxZoom)"
            out.append(
                "  plan \(plan.tms.id) \(z): \(plan.shardCount) shard(s) in \(plan.scheme.bands.count) band(s) "
                    + "[\(plan.shards.map { String($0.count) }.joined(separator: ", "))], ~\(plan.estimatedTiles) tiles, "
                    + "~\(Progress.bytes(plan.estimatedBytes))")
        }
        for u in s.updates {
            out.append(contentsOf: Self.describe(u, dryRun: dryRun))
        }
        for g in s.grids {
            let rate = g.seconds > 0 ? Double(g.pixelsRead) / g.seconds / 1e6 : 0
            out.append(
                "  built \(g.grid) z\(g.minZoom)–\(g.maxZoom): generation \(g.generation), \(g.shards) shard(s): "
                    + "\(g.shardsBuilt) built\(g.shardsEmpty > 0 ? " (\(g.shardsEmpty) empty, not kept)" : ""), "
                    + "\(g.shardsReused) reused"
                    + (g.shardsResumed > 0 ? ", \(g.shardsResumed) finished before (--resume)" : "") + "; "
                    + "tiles \(g.tilesEncoded) encoded, \(g.tilesCopied) copied; \(g.tiles) tiles, "
                    + "\(Progress.bytes(g.bytes)) in \(Progress.duration(g.seconds)), "
                    + "\(String(format: "%.1f", rate)) Mpx/s read")
            for f in g.failed { out.append("  FAILED shard \(f)") }
        }
        if !dryRun {
            let total = s.seconds > 0 ? Double(s.sourcePixels) / s.seconds / 1e6 : 0
            out.append(
                "  total \(Progress.duration(s.seconds)), \(String(format: "%.1f", total)) source Mpx/s over all grids")
            out.append("  pyramids in \(store)/\(definition.id)/<grid>/pyramid.json")
        }
        if s.skipped.isEmpty {
            out.append("  skipped: none")
        } else {
            out.append("  skipped \(s.skipped.count) dalle(s):")
            for (p, r) in s.skipped { out.append("    \((p as NSString).lastPathComponent): \(r)") }
        }
        return out.joined(separator: "\n")
    }
}
