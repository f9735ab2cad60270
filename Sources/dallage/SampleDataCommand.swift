import ArgumentParser
import Foundation
import Tiler

struct SampleDataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sample-data",
        abstract: "Write deterministic, realistic orthophoto dalles named like IGN's PCRS dalles.")

    @Option(help: "Output folder.") var out: String
    @Option(help: "Columns × rows of dalles, e.g. 4x4.") var dalles = "4x4"
    @Option(name: .customLong("dalle-size"), help: "Dalle side in metres.") var dalleSize = 200.0
    @Option(help: "Pixel size in metres.") var resolution = 0.05
    @Option(help: "CRS of the dalles, e.g. EPSG:2154 or EPSG:3949 (CC49).") var crs = "EPSG:2154"
    @Option(help: "gtiff (JPEG-in-TIFF, tiled) or jp2 (JPEG 2000).") var format = "gtiff"
    @Option(help: "Top-left corner x,y in the CRS (default: Lille).") var origin: String?
    @Option(help: "Worker threads.") var threads: Int?

    func run() throws {
        var s = SampleData()
        let parts = dalles.lowercased().split(separator: "x").compactMap { Int($0) }
        guard parts.count == 2, parts[0] > 0, parts[1] > 0 else {
            throw ValidationError("--dalles takes CxR, e.g. 4x4")
        }
        // A region at 200 m dalles is about 800,000 of them.
        guard parts[0] <= 10_000, parts[1] <= 10_000, parts[0] * parts[1] <= 1_000_000 else {
            throw ValidationError("--dalles is at most 10000 on a side and 1,000,000 in all")
        }
        guard resolution.isFinite, resolution > 0, resolution <= 1000 else {
            throw ValidationError("--resolution is a pixel size in metres, above 0 and at most 1000")
        }
        guard dalleSize.isFinite, dalleSize > 0, dalleSize <= 100_000 else {
            throw ValidationError("--dalle-size is in metres, above 0 and at most 100000")
        }
        s.columns = parts[0]
        s.rows = parts[1]
        s.dalleSize = dalleSize
        s.resolution = resolution
        s.crs = crs
        guard let f = SampleData.Format(rawValue: format) else { throw ValidationError("--format is gtiff or jp2") }
        s.format = f
        if let origin {
            let xy = origin.split(separator: ",").compactMap { Double($0) }
            guard xy.count == 2, xy.allSatisfy({ $0.isFinite && $0.magnitude <= 1e8 }) else {
                throw ValidationError("--origin takes x,y: two finite numbers in the CRS (at most 1e8)")
            }
            s.origin = (xy[0], xy[1])
        }
        let pixels = dalleSize / resolution
        guard pixels == pixels.rounded(), pixels >= 16, pixels <= 20_000 else {
            throw ValidationError(
                "--dalle-size must be a whole number of pixels, 16…20000 (--dalle-size / --resolution)")
        }
        let started = Date()
        let paths = try s.write(to: out, threads: threads ?? ProcessInfo.processInfo.activeProcessorCount)
        let mpx = Double(paths.count) * pixels * pixels / 1e6
        print(
            "wrote \(paths.count) dalle(s), \(String(format: "%.1f", mpx)) Mpx, to \(out) in \(Progress.duration(Date().timeIntervalSince(started)))"
        )
    }
}
