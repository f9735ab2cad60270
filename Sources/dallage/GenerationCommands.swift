import ArgumentParser
import Foundation
import Pyramid
import Tiler

struct CollectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Delete shards and generation records no kept generation of a pyramid needs.",
        discussion: """
            Keeps the current generation and the ones before it up to --keep (so `dallage rollback` can
            return to them). A generation replaced less than --grace ago stays too, as servers may still
            serve it until their next rescan; so does any unlisted file younger than --grace (the shards of
            an interrupted build, which `dallage tile --resume` reuses).
              dallage gc store/demo/2154_5cm --keep 2 --grace 1h --dry-run
              dallage gc s3://ortho/store/demo/2154_5cm --keep 2      # objects deleted from the bucket
            """)

    @Argument(
        help: "Pyramid: a folder (store/demo/2154_5cm) or its prefix in a bucket (s3://bucket/store/demo/2154_5cm).")
    var pyramid: String
    @Option(help: "Generations to keep, the current one included.") var keep = 2
    @Option(help: "How long a replaced generation may still be served: 0, 90s, 15m, 2h, 7d.") var grace = "1h"
    @Flag(name: .customLong("dry-run"), help: "Print what would be deleted and stop.") var dryRun = false
    @Option(help: "With an s3:// pyramid, the folder of the build lock, as `dallage tile --staging` (default: TMPDIR).")
    var staging: String?

    func run() throws {
        let target = try PyramidArgument(self.pyramid)
        guard let seconds = Self.duration(grace) else {
            throw ValidationError("--grace '\(grace)' is not a duration (0, 90s, 15m, 2h, 7d)")
        }
        // A refusal is printed as it is (no usage text: the arguments were fine, the store was not).
        let report: CollectionReport
        switch target {
        case .folder(let pyramid):
            report = try PyramidFolder(pyramid).collect(keep: keep, grace: seconds, dryRun: dryRun)
        case .bucket(let name, let prefix):
            report = try withBucket(name: name, prefix: prefix) { bucket in
                try BucketGenerations(pyramid: BucketPyramid(bucket: bucket, prefix: prefix), stagingRoot: staging)
                    .collect(keep: keep, grace: seconds, dryRun: dryRun)
            }
        }
        let verb = dryRun ? "would delete" : "deleted"
        func list(_ g: [Int]) -> String { g.isEmpty ? "none" : g.map(String.init).joined(separator: ", ") }
        print("kept generations: \(list(report.kept))")
        if !report.protected.isEmpty {
            print("still within the grace period (replaced less than \(grace) ago): \(list(report.protected))")
        }
        print("generations dropped: \(list(report.dropped))")
        for f in report.deletedFiles.prefix(20) { print("  \(verb) \(f)") }
        if report.deletedFiles.count > 20 { print("  … and \(report.deletedFiles.count - 20) more") }
        print("\(verb) \(report.deletedFiles.count) shard file(s), \(Progress.bytes(report.freedBytes))")
        if report.youngFiles > 0 {
            print("left \(report.youngFiles) unlisted file(s) younger than \(grace) (an interrupted build's?)")
        }
    }

    /// Seconds in `text`: a number with an optional unit s, m, h or d; nil when it is not one.
    static func duration(_ text: String) -> TimeInterval? {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        var number = Substring(text)
        var scale = 1.0
        if let last = text.last, let u = units[last] {
            number = text.dropLast()
            scale = u
        }
        guard let value = Double(number), value.isFinite, value >= 0, value * scale < 1e9 else { return nil }
        return value * scale
    }
}

struct RollbackCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback",
        abstract: "Serve a kept generation of a pyramid again.",
        discussion: """
            The switch is a new generation listing the old one's shards (numbers only grow, so servers
            and later builds see it like any other); `dallage inspect` lists the kept generations. In a
            bucket, pyramid.json is replaced with the tiler's compare-and-swap (only over the manifest
            just read), and the footprint is traced again from the shards' coarse levels (fetched
            into --staging).
              dallage rollback store/demo/2154_5cm 3
              dallage rollback s3://ortho/store/demo/2154_5cm 3
            """)

    @Argument(
        help: "Pyramid: a folder (store/demo/2154_5cm) or its prefix in a bucket (s3://bucket/store/demo/2154_5cm).")
    var pyramid: String
    @Argument(help: "The generation to serve again.") var generation: Int
    @Option(help: "With an s3:// pyramid, the folder of the build lock and the footprint's trace (default: TMPDIR).")
    var staging: String?

    func run() throws {
        let target = try PyramidArgument(self.pyramid)
        let m: PyramidManifest
        let pyramid: String
        switch target {
        case .folder(let path):
            pyramid = path
            m = try PyramidFolder(path).rollback(to: generation)
        case .bucket(let name, let prefix):
            pyramid = self.pyramid
            m = try withBucket(name: name, prefix: prefix) { bucket in
                try BucketGenerations(pyramid: BucketPyramid(bucket: bucket, prefix: prefix), stagingRoot: staging)
                    .rollback(to: generation, threads: ProcessInfo.processInfo.activeProcessorCount)
            }
        }
        print(
            "\(pyramid): generation \(m.generation ?? 0) is current, serving the \(m.shards.count) shard(s) of generation \(generation)"
        )
    }
}
