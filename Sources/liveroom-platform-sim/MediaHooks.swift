import Foundation
import LiveRoomRPC
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

/// The HTTP endpoint nginx-rtmp's `on_publish` and `on_done` call: the platform decides which
/// keys may publish (2xx yes, 403 no) and learns when its rooms go live and end.
final class MediaHooks: Sendable {
    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>
    let listener: NIOAsyncChannel<Connection, Never>
    let address: String
    private let task: Task<Void, Never>

    private init(listener: NIOAsyncChannel<Connection, Never>, address: String, task: Task<Void, Never>) {
        self.listener = listener
        self.address = address
        self.task = task
    }

    static func start(host: String, port: Int, platform: SimPlatform, logger: Logger) async throws -> MediaHooks {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        let bound = listener.channel.localAddress?.port ?? port
        let task = Task<Void, Never> {
            _ = try? await listener.executeThenClose { inbound in
                try await withThrowingDiscardingTaskGroup { group in
                    for try await connection in inbound {
                        group.addTask { await serve(connection, platform, logger) }
                    }
                }
            }
        }
        return MediaHooks(listener: listener, address: "\(host):\(bound)", task: task)
    }

    func stop() {
        listener.channel.close(promise: nil)
        task.cancel()
    }

    private static func serve(_ connection: Connection, _ platform: SimPlatform, _ logger: Logger) async {
        try? await connection.executeThenClose { inbound, outbound in
            var path = ""
            var body = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let head):
                    path = head.uri
                    body.clear()
                case .body(var b):
                    if body.readableBytes + b.readableBytes <= 64 * 1024 { body.writeBuffer(&b) }
                case .end:
                    let form = Self.form(String(buffer: body) + "&" + (path.split(separator: "?").dropFirst().first.map(String.init) ?? ""))
                    let key = form["name"] ?? ""
                    var status = HTTPResponseStatus.ok
                    switch form["call"] ?? "" {
                    case "publish":
                        let ok = await platform.onPublish(key: key)
                        status = ok ? .ok : .forbidden
                        logger.info("media server asks whether a key may publish", metadata: ["allowed": "\(ok)"])
                    case "publish_done":
                        await platform.onDone(key: key)
                    default:
                        break  // play, play_done, ...: anyone may watch
                    }
                    // nginx-rtmp's notify reads the answer until the connection closes.
                    var head = HTTPResponseHead(version: .http1_1, status: status)
                    head.headers.add(name: "content-length", value: "0")
                    head.headers.add(name: "connection", value: "close")
                    try await outbound.write(.head(head))
                    try await outbound.write(.end(nil))
                    return
                }
            }
        }
    }

    static func form(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard let k = kv.first else { continue }
            let v = kv.count > 1 ? String(kv[1]) : ""
            out[String(k)] = (v.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? v)
        }
        return out
    }
}
