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

    /// Parses and runs as ArgumentParser does, with Foundation's file errors said in one line
    /// (the path and what the system said) instead of their dump.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asynchronous = command as? AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: FileProblem(error) ?? error)
        }
    }
}

/// A file or folder that could not be read or written, as one line for a person:
/// `nothere.json: no such file or folder`.
struct FileProblem: Error, CustomStringConvertible {
    var description: String

    /// Nil for any error that is not one of Foundation's file errors.
    init?(_ error: any Error) {
        let ns = error as NSError
        guard ns.domain == NSCocoaErrorDomain else { return nil }
        let path = ns.userInfo[NSFilePathErrorKey] as? String ?? (ns.userInfo[NSURLErrorKey] as? URL)?.path
        let reason: String
        if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
            reason = String(cString: strerror(Int32(truncatingIfNeeded: underlying.code))).lowercased()
        } else {
            switch CocoaError.Code(rawValue: ns.code) {
            case .fileNoSuchFile, .fileReadNoSuchFile: reason = "no such file or folder"
            case .fileReadNoPermission, .fileWriteNoPermission: reason = "permission denied"
            case .fileWriteOutOfSpace: reason = "no space left on the device"
            case .fileWriteVolumeReadOnly: reason = "the volume is read-only"
            case .fileWriteFileExists: reason = "something is already there"
            default:
                var isFolder: ObjCBool = false
                if let path, FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), isFolder.boolValue {
                    reason = "a folder, where a file is expected"
                } else {
                    reason = ns.localizedDescription
                }
            }
        }
        description = path.map { "\($0): \(reason)" } ?? reason
    }
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
    if let env = ProcessInfo.processInfo.environment["DALLAGE_TMS_DIR"], !env.isEmpty { return env }
    let candidates = [
        "config/tms",
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("../../../config/tms").standardizedFileURL.path,
        "/usr/local/share/dallage/tms",
    ]
    return candidates.first { FileManager.default.fileExists(atPath: $0) } ?? "config/tms"
}
