import ArgumentParser
import Foundation
import GeoGrid
import Pyramid

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write a pyramid's tiles as plain files (<out>/<z>/<x>/<y>.<ext>), byte for byte, for static hosting."
    )

    @Argument(help: "Pyramid folder, e.g. store/demo/PM.") var pyramid: String
    @Option(help: "Output folder.") var out: String
    @Option(name: .customLong("min-zoom")) var minZoom: Int?
    @Option(name: .customLong("max-zoom")) var maxZoom: Int?

    func run() throws {
        let pyramid = try localFolder(self.pyramid, command: "export")
        let reader = try PyramidReader(directory: pyramid)
        let m = reader.manifest
        let ext = m.format.fileExtension
        var written = 0
        var bytes = 0
        for shard in m.shards {
            guard let band = m.shardScheme.band(containing: shard.z) else { continue }
            for z in band.top...band.deepest where z >= (minZoom ?? m.minZoom) && z <= (maxZoom ?? m.maxZoom) {
                for t in shard.coordinate.descendants(levels: z - band.top).tiles {
                    guard let data = try reader.tileData(t) else { continue }
                    let dir = "\(out)/\(t.z)/\(t.col)"
                    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                    try Data(data).write(to: URL(fileURLWithPath: "\(dir)/\(t.row).\(ext)"))
                    written += 1
                    bytes += data.count
                }
            }
        }
        print("wrote \(written) tiles, \(bytes) bytes, to \(out)")
    }
}
