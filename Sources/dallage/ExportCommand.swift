import ArgumentParser
import Foundation
import GeoGrid
import Pyramid

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a pyramid's tiles as plain files (<out>/<z>/<x>/<y>.<ext>), byte for byte, for static hosting."
    )

    @Argument(help: "Pyramid folder, e.g. store/demo/PM, or s3://bucket/store/demo/PM.") var pyramid: String
    @Option(help: "Output folder.") var out: String
    @Option(name: .customLong("min-zoom")) var minZoom: Int?
    @Option(name: .customLong("max-zoom")) var maxZoom: Int?
    @Flag(
        name: .customLong("keep-going"),
        help: "Exit 0 even when damaged shards were skipped (they are still named).")
    var keepGoing = false

    func run() throws {
        var written = 0
        var bytes = 0
        // A shard that cannot be read (truncated, corrupt, gone) is skipped by name: the others'
        // tiles are written all the same, as `tile` skips an unreadable dalle.
        var skipped: [(String, String)] = []
        switch try PyramidArgument(self.pyramid) {
        case .folder(let pyramid):
            let m = try PyramidManifest.load(directory: pyramid)
            for shard in m.shards {
                var counted = (0, 0)
                defer { (written, bytes) = (written + counted.0, bytes + counted.1) }
                do {
                    try export(
                        try ShardReader(path: (pyramid as NSString).appendingPathComponent(shard.path)), shard, m,
                        counted: &counted)
                } catch let e as ShardError {
                    FileHandle.standardError.write(Data("skipping shard \(shard.path): \(e.reason)\n".utf8))
                    skipped.append((shard.path, e.reason))
                }
            }
        case .bucket(let name, let prefix):
            // One shard at a time, fetched into the output folder's scratch file and removed.
            let command = self
            (written, bytes) = try withBucketPyramid(name: name, prefix: prefix) { p in
                guard let m = try await p.currentManifestText()?.manifest else {
                    throw ValidationError("\(command.pyramid) is not a pyramid (no pyramid.json under it)")
                }
                var totals = (0, 0)
                for shard in m.shards {
                    let (n, b) = try await p.withShard(shard.path, scratch: command.out) {
                        var counted = (0, 0)
                        try command.export(try ShardReader(path: $0), shard, m, counted: &counted)
                        return counted
                    }
                    totals = (totals.0 + n, totals.1 + b)
                }
                return totals
            }
        }
        print("wrote \(written) tiles, \(bytes) bytes, to \(out)")
        if !skipped.isEmpty {
            print("skipped \(skipped.count) damaged shard(s); the tiles read from them before the damage are written:")
            for (path, reason) in skipped { print("  \(path): \(reason)") }
            if !keepGoing { throw ExitCode(1) }
        }
    }

    /// Writes the tiles of one shard in the zoom range, counting the tiles and bytes written
    /// (those before a damage that stops it too).
    func export(
        _ reader: ShardReader, _ shard: PyramidManifest.Shard, _ m: PyramidManifest, counted: inout (Int, Int)
    ) throws {
        guard let band = m.shardScheme.band(containing: shard.z) else { return }
        for z in band.top...band.deepest where z >= (minZoom ?? m.minZoom) && z <= (maxZoom ?? m.maxZoom) {
            let up = z - band.top
            for t in shard.coordinate.descendants(levels: up).tiles {
                guard
                    let data = try reader.tile(
                        overview: band.deepest - z, col: t.col - (shard.col << up), row: t.row - (shard.row << up))
                else { continue }
                let dir = "\(out)/\(t.z)/\(t.col)"
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                try Data(data).write(to: URL(fileURLWithPath: "\(dir)/\(t.row).\(m.format.fileExtension)"))
                counted.0 += 1
                counted.1 += data.count
            }
        }
    }
}
