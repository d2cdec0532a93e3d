import ArgumentParser
import Foundation
import LiveRoomClient
import LiveRoomMessages
import LiveRoomRPC
import NIOCore

/// Runs one unary call and prints the response: `render` for people, JSON with --json.
func callAndPrint<I, O>(_ global: GlobalOptions, _ method: ProtoMethod<I, O>, _ request: I, render: (O) -> String) async throws {
    try await reportingErrors {
        let client = try await global.connection.connect()
        defer { Task { await client.close() } }
        let response = try await client.unary(method, request, timeout: global.deadline ?? .seconds(30))
        if global.json {
            var b = ByteBuffer()
            try response.serialize(into: &b)
            printLine(try ProtoJSON.text(from: b, as: O.protoDescriptor))
        } else {
            printLine(render(response))
        }
    }
}

func shortName<E: ProtoEnum>(_ value: E, _ prefix: String) -> String {
    let n = value.name
    return n.hasPrefix(prefix) ? String(n.dropFirst(prefix.count)).lowercased().replacingOccurrences(of: "_", with: " ") : n
}

func time(_ ms: Int64) -> String {
    guard ms > 0 else { return "-" }
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime]
    return f.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
}

/// One room, a field a line, as an admin page shows it.
func describeRoom(_ r: Room) -> String {
    let rows: [(String, String)] = [
        ("room", r.roomId), ("title", r.title), ("kind", shortName(r.kind, "ROOM_KIND_")),
        ("platform", r.platformId + (r.platformRoomId.isEmpty ? "" : " (\(r.platformRoomId))")),
        ("play mode", shortName(r.playMode, "PLAY_MODE_")), ("status", shortName(r.status, "ROOM_STATUS_")),
        ("push server", r.pushServer), ("stream key", r.streamKey),
        ("key status", r.keyStatus == .expired ? "expired (key invalid)" : shortName(r.keyStatus, "KEY_STATUS_")),
        ("key expires", time(r.keyExpiresAtMs)), ("play url", r.playUrl),
        ("playback", r.publicPlayback ? "public (no viewer token needed)" : "private (viewer tokens: liveroomctl viewer-token)"),
        ("owner", r.ownerId.isEmpty ? "-" : r.ownerId),
        ("created", time(r.createdAtMs)), ("request id", r.requestId),
    ] + (r.ingest == .unspecified ? [] : [("ingest", shortName(r.ingest, "INGEST_"))])
    var text = rows.map { "\($0.0.padding(toLength: 12, withPad: " ", startingAt: 0)) \($0.1)" }.joined(separator: "\n")
    if !r.destinations.isEmpty { text += "\n\n" + destinationTable(r.destinations) }
    return text
}

/// A room's destinations, a line each.
func destinationTable(_ list: [Destination]) -> String {
    table(["DESTINATION", "TARGET", "URL", "KEY", "STATE", "SENT", "KBIT/S", "RECONNECTS", "LAST ERROR"], list.map { d in
        var state = shortName(d.state, "DESTINATION_STATE_")
        if d.state == .retrying { state += " at \(time(d.nextAttemptAtMs))" }
        return [d.destinationId, d.targetRoomId.isEmpty ? "rtmp" : "\(d.targetRoomId) (\(d.platformId))", d.url, d.streamKeyHint, state,
                "\(d.bytesSent)", "\(d.bitrateBps / 1000)", "\(d.reconnects)", d.lastError.isEmpty ? "-" : d.lastError]
    })
}

struct DestinationsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "destinations", abstract: "Where a room's stream is relayed (simulcast): list, add, remove.",
        subcommands: [List.self, Add.self, Remove.self], defaultSubcommand: List.self)

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List a room's destinations and how they are doing.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Room id.") var room: String

        func run() async throws {
            var r = ListDestinationsRequest()
            r.roomId = room
            try await callAndPrint(global, RoomService.listDestinations, r) { destinationTable($0.destinations) }
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add", abstract: "Relay a room to another platform's room, or to a plain RTMP URL and key.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Room id (the source).") var room: String
        @Option(name: .customLong("target-room"), help: "A room on an external platform to publish to.") var targetRoom = ""
        @Option(help: "rtmp://HOST[:PORT]/APP, as a platform hands out for OBS.") var url = ""
        @Option(name: .customLong("key"), help: "The stream key for --url (or LIVEROOM_DESTINATION_KEY, kept out of the shell history).")
        var key: String?

        func run() async throws {
            var r = AddDestinationRequest()
            r.roomId = room
            r.targetRoomId = targetRoom
            r.url = url
            r.streamKey = key ?? ProcessInfo.processInfo.environment["LIVEROOM_DESTINATION_KEY"] ?? ""
            try await callAndPrint(global, RoomService.addDestination, r) { destinationTable([$0.destination ?? Destination()]) }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove", abstract: "Stop relaying to a destination and forget it.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Room id.") var room: String
        @Argument(help: "Destination id.") var destination: String

        func run() async throws {
            var r = RemoveDestinationRequest()
            r.roomId = room
            r.destinationId = destination
            try await callAndPrint(global, RoomService.removeDestination, r) { _ in "removed \(destination)" }
        }
    }
}

/// Columns padded to their widest cell.
func table(_ header: [String], _ rows: [[String]]) -> String {
    var widths = header.map(\.count)
    for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }
            .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
    }
    return ([line(header)] + rows.map(line)).joined(separator: "\n")
}

struct PlatformsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "platforms", abstract: "List the platforms rooms can be created on.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        try await callAndPrint(global, RoomService.listPlatforms, ListPlatformsRequest()) { r in
            table(["PLATFORM", "NAME", "LIVE", "MEETING", "CONNECTOR", "REACHABLE"], r.platforms.map { p in
                [p.platformId, p.displayName, p.supportsLive ? "yes" : "no", p.supportsMeeting ? "yes" : "no",
                 p.builtin ? "(built-in)" : p.connectorAddress,
                 p.reachable ? "yes" : "no" + (p.unreachableReason.isEmpty ? "" : ": \(p.unreachableReason)")]
            })
        }
    }
}

struct CreateRoomCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create-room", abstract: "Create a room on a platform.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "The platform: self (built-in) or an external platform's id.") var platform: String
    @Option(help: "The activity's name.") var title: String
    @Option(help: "live or meeting.") var kind = "live"
    @Option(name: .customLong("play-mode"), help: "embedded (watch through us) or external (jump to the platform).") var playMode: String?
    @Option(help: "The broadcaster's user id.") var owner = ""
    @Option(name: .customLong("request-id"), help: "Idempotency key: the same id returns the same room.") var requestId = ""
    @Option(help: "External platforms: relay (publish to us, we publish to the platform) or direct (publish to the platform, we mirror).")
    var ingest: String?
    @Option(name: .customLong("simulcast"), help: "Also create a room on this external platform and relay to it (repeatable).")
    var simulcast: [String] = []
    @Flag(name: .customLong("public"), help: "Anyone may play the room over HTTP, without a viewer token.") var publicPlayback = false

    func run() async throws {
        var r = CreateRoomRequest()
        r.publicPlayback = publicPlayback
        switch ingest {
        case nil: break
        case "relay": r.ingest = .relay
        case "direct": r.ingest = .direct
        default: throw ValidationError("--ingest is relay or direct")
        }
        r.simulcastPlatformIds = simulcast
        r.platformId = platform
        r.title = title
        switch kind {
        case "live": r.kind = .live
        case "meeting": r.kind = .meeting
        default: throw ValidationError("--kind is live or meeting")
        }
        switch playMode {
        case nil: r.playMode = .unspecified
        case "embedded": r.playMode = .embedded
        case "external": r.playMode = .external
        default: throw ValidationError("--play-mode is embedded or external")
        }
        r.ownerId = owner
        r.requestId = requestId
        try await callAndPrint(global, RoomService.createRoom, r) { response in
            (response.created ? "" : "(already created by this request id)\n") + describeRoom(response.room ?? Room())
                + response.linkedRooms.map { "\n\nsimulcast to \($0.platformId):\n" + describeRoom($0) }.joined()
        }
    }
}

struct RoomCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "room", abstract: "Show one room.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String

    func run() async throws {
        var r = GetRoomRequest()
        r.roomId = id
        try await roomAction(global, RoomService.getRoom, r, \.room)
    }
}

struct RoomsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rooms", abstract: "List rooms, newest first.")
    @OptionGroup var global: GlobalOptions
    @Option(help: "not-started, live or ended.") var status: String?
    @Option(help: "Only this platform.") var platform: String?
    @Option(help: "live or meeting.") var kind: String?
    @Option(name: .customLong("page-size"), help: "Rooms per page (default 50).") var pageSize: Int32 = 0
    @Option(name: .customLong("page-token"), help: "From the previous page.") var pageToken = ""

    func run() async throws {
        var r = ListRoomsRequest()
        switch status {
        case nil: break
        case "not-started": r.status = .notStarted
        case "live": r.status = .live
        case "ended": r.status = .ended
        default: throw ValidationError("--status is not-started, live or ended")
        }
        switch kind {
        case nil: break
        case "live": r.kind = .live
        case "meeting": r.kind = .meeting
        default: throw ValidationError("--kind is live or meeting")
        }
        r.platformId = platform ?? ""
        r.pageSize = pageSize
        r.pageToken = pageToken
        try await callAndPrint(global, RoomService.listRooms, r) { response in
            let body = table(
                ["ROOM", "TITLE", "KIND", "PLATFORM", "STATUS", "PUSH SERVER", "STREAM KEY", "PLAY URL", "KEY", "KEY EXPIRES"],
                response.rooms.map { m in
                    [m.roomId, m.title, shortName(m.kind, "ROOM_KIND_"), m.platformId, shortName(m.status, "ROOM_STATUS_"),
                     m.pushServer, m.streamKey, m.playUrl, m.keyStatus == .expired ? "invalid" : "valid", time(m.keyExpiresAtMs)]
                })
            return body + (response.nextPageToken.isEmpty ? "" : "\nnext page: --page-token \(response.nextPageToken)")
        }
    }
}

/// The commands that act on one room and print it.
func roomAction<I, O>(_ global: GlobalOptions, _ method: ProtoMethod<I, O>, _ request: I, _ room: (O) -> Room?) async throws {
    try await callAndPrint(global, method, request) { describeRoom(room($0) ?? Room()) }
}

struct RefreshCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "refresh", abstract: "Update a room's status from its platform.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String

    func run() async throws {
        var r = RefreshRoomRequest()
        r.roomId = id
        try await roomAction(global, RoomService.refreshRoom, r, \.room)
    }
}

struct RotateKeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rotate-key", abstract: "Issue a new stream key; the old one stops working.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String

    func run() async throws {
        var r = RotateKeyRequest()
        r.roomId = id
        try await roomAction(global, RoomService.rotateKey, r, \.room)
    }
}

struct CloseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "close", abstract: "End a room here and on its platform.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String

    func run() async throws {
        var r = CloseRoomRequest()
        r.roomId = id
        try await roomAction(global, RoomService.closeRoom, r, \.room)
    }
}
