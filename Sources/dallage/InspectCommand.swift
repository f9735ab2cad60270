import ArgumentParser
import Foundation
import Pyramid
import Tiler

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect", abstract: "Summarise a pyramid (STORE/TILESET/GRID).")

    @Argument(help: "Pyramid folder, e.g. store/demo/2154_5cm, or s3://bucket/store/demo/2154_5cm.")
    var pyramid: String
    @Flag(help: "Print pyramid.json as it is.") var json = false

    func run() throws {
        let m: PyramidManifest
        let text: String
        let history: [GenerationInfo]
        switch try PyramidArgument(self.pyramid) {
        case .folder(let pyramid):
            do { m = try PyramidManifest.load(directory: pyramid) } catch {
                throw ValidationError("\(pyramid) is not a pyramid (no readable pyramid.json): \(error)")
            }
            text =
                json
                ? try String(
                    contentsOfFile: (pyramid as NSString).appendingPathComponent(PyramidManifest.fileName),
                    encoding: .utf8) : ""
            history = (try? PyramidFolder(pyramid).history()) ?? []
        case .bucket(let name, let prefix):
            let found = try withBucketPyramid(name: name, prefix: prefix) { p in
                (try await p.currentManifestText(), (try? await p.history()) ?? [])
            }
            guard let current = found.0 else {
                throw ValidationError("\(self.pyramid) is not a pyramid (no pyramid.json under it)")
            }
            (text, m, history) = (current.text, current.manifest, found.1)
        }
        if json {
            print(text)
            return
        }
        let b = m.bounds
        let w = m.wgs84Bounds
        print(
            """
            tileset     \(m.tileset)
            grid        \(m.tileMatrixSet.id) (\(m.tileMatrixSet.crs))
            format      \(m.format.rawValue) q\(m.quality), \(m.tileSize) px tiles, overviews by \(m.resampling)
            levels      z\(m.minZoom)–z\(m.maxZoom), cell \(m.tileMatrixSet.tileMatrices[m.maxZoom].cellSize) at z\(m.maxZoom)
            bands       \(m.shardScheme.bands.map { "z\($0.deepest)→\($0.top)" }.joined(separator: ", "))
            bounds      \(b.minX), \(b.minY), \(b.maxX), \(b.maxY)
            wgs84       \(String(format: "%.6f, %.6f, %.6f, %.6f", w.minX, w.minY, w.maxX, w.maxY))
            shards      \(m.shards.count), \(m.shards.reduce(0) { $0 + $1.tiles }) tiles, \(Progress.bytes(m.shards.reduce(0) { $0 + $1.bytes }))
            created     \(m.created) by \(m.tool), sources \(m.sourcesDigest)
            """)
        if history.isEmpty {
            print("generations none (written before generations: format \(m.formatVersion))")
        } else {
            print("generation  created               shards  new  size")
            for g in history.reversed() {
                let mark = g.isCurrent ? "*" : " "
                let restores = g.restores.map { "  restores \($0)" } ?? ""
                print(
                    "\(mark) \(String(g.generation).padding(toLength: 9, withPad: " ", startingAt: 0)) "
                        + "\(g.created.padding(toLength: 21, withPad: " ", startingAt: 0)) "
                        + String(format: "%6d %4d  ", g.shards, g.newShards) + Progress.bytes(g.bytes) + restores)
            }
        }
        print("level  tiles (cols × rows limits)")
        for l in m.levels {
            print(String(format: "z%-5d cols %d–%d, rows %d–%d", l.z, l.minCol, l.maxCol, l.minRow, l.maxRow))
        }
    }
}

struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check every shard against pyramid.json (size, checksum, COG layout); non-zero exit on a problem.")

    @Argument(help: "Pyramid folder, e.g. store/demo/PM, or s3://bucket/store/demo/PM.") var pyramid: String
    @Option(help: "With an s3:// pyramid, where each shard is fetched to be checked (default: TMPDIR).")
    var scratch: String?

    func run() throws {
        let checked: Int
        let problems: [PyramidValidator.Problem]
        switch try PyramidArgument(self.pyramid) {
        case .folder(let pyramid):
            (checked, problems) = try PyramidValidator.validate(directory: pyramid)
        case .bucket(let name, let prefix):
            let scratch = self.scratch ?? NSTemporaryDirectory()
            (checked, problems) = try withBucketPyramid(name: name, prefix: prefix) { p in
                try await p.validate(scratch: scratch)
            }
        }
        for p in problems { print("PROBLEM \(p)") }
        print("\(checked) shard(s) checked, \(problems.count) problem(s)")
        if !problems.isEmpty { throw ExitCode(1) }
    }
}
