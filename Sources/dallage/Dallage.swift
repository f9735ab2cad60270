import ArgumentParser
import Foundation
import Logging

@main
struct Dallage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dallage",
        abstract: "Orthophoto dalles → cloud-optimized tile pyramids, served over WMTS/XYZ.",
        version: "0.1.0",
        subcommands: [
            TileCommand.self, ServeCommand.self, SampleDataCommand.self, InspectCommand.self, ValidateCommand.self,
            ExportCommand.self, CollectCommand.self, RollbackCommand.self, TerritoriesCommand.self,
            ProjectsCommand.self, ExtractCommand.self,
        ])
}

/// Logs to standard error, one line per event, at the level given by DALLAGE_LOG_LEVEL (info).
func makeLogger(_ label: String) -> Logger {
    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    var logger = Logger(label: label)
    logger.logLevel =
        ProcessInfo.processInfo.environment["DALLAGE_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .info
    return logger
}

/// The folder of grids: `--tms-dir`, else `DALLAGE_TMS_DIR`, else `config/tms` here or beside the executable's package.
func defaultTMSDirectory() -> String {
    if let env = ProcessInfo.processInfo.environment["DALLAGE_TMS_DIR"] { return env }
    let candidates = [
        "config/tms",
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("../../../config/tms").standardizedFileURL.path,
        "/usr/local/share/dallage/tms",
    ]
    return candidates.first { FileManager.default.fileExists(atPath: $0) } ?? "config/tms"
}
