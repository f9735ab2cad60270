import ArgumentParser
import Coverage
import Foundation
import Hummingbird
import Server

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve every pyramid of the store over WMTS, XYZ, TileJSON and OGC API Tiles.")

    @Option(help: "Configuration file (YAML); DALLAGE_* variables and flags override it.") var config: String?
    @Option(help: "Store: a folder, or s3://bucket/prefix (credentials and endpoint from AWS_* variables).")
    var store: String?
    @Option(help: "Address to listen on.") var host: String?
    @Option(help: "Port.") var port: Int?
    @Option(name: .customLong("tms-dir"), help: "Folder of OGC TMS 2.0 JSON grids.") var tmsDirectory: String?

    func run() async throws {
        // Before anything starts NIO's shared event loops.
        let eventLoops = EventLoopCount.adopt()
        let logger = makeLogger("dallage.serve")
        var file = ServerConfiguration()
        let path =
            config ?? (FileManager.default.fileExists(atPath: "config/dallage.yaml") ? "config/dallage.yaml" : nil)
        if let path {
            do { file = try ServerConfiguration.load(path: path) } catch {
                throw ValidationError("cannot read \(path): \(error)")
            }
        }
        if let v = ProcessInfo.processInfo.environment["DALLAGE_PORT"], Int(v) == nil {
            throw ValidationError("DALLAGE_PORT must be a port number, got '\(v)'")
        }
        let configuration = file.merged(
            environment: ProcessInfo.processInfo.environment,
            flags: .init(
                host: host, port: port, store: store,
                tmsDirectory: tmsDirectory ?? (config == nil ? defaultTMSDirectory() : nil)))
        guard (0...65535).contains(configuration.port) else {
            throw ValidationError("the port must be 0…65535 (0: any free port), got \(configuration.port)")
        }
        let opened: OpenedStore
        do {
            opened = try await OpenedStore.open(
                configuration, environment: ProcessInfo.processInfo.environment, logger: logger)
        } catch {
            // One line, without the usage text a ValidationError would add: the command was right.
            throw StartFailure(description: error.description)
        }
        do {
            let location: DatabaseLocation
            do { location = try configuration.databaseLocation() } catch { throw ValidationError(error.message) }
            let database = try await location.open(logger: logger)
            logger.info(
                "listening on http://\(configuration.host):\(configuration.port), event loops: \(eventLoops), store \(opened.store.location), database \(location), extracts \(opened.extractResults)"
            )
            let app = try buildApplication(
                configuration: configuration, store: opened.store, database: database,
                extractResults: opened.extractResults, objects: opened.client, logger: logger)
            try await app.runService()
        } catch {
            await opened.close()
            throw error
        }
        await opened.close()
    }
}

/// A server that cannot start, said in one line (`Error: …`), exit status 1.
struct StartFailure: Error, CustomStringConvertible {
    var description: String
}
