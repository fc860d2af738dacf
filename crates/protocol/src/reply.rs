//! AMQP reply codes, with the names RabbitMQ prints in front of a reply text.

/// A reply code of `connection.close` / `channel.close`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReplyCode {
    /// 200: normal close.
    Success = 200,
    /// 311: content too large (soft).
    ContentTooLarge = 311,
    /// 312: mandatory message could not be routed (`basic.return`).
    NoRoute = 312,
    /// 313: immediate message had no consumers (soft).
    NoConsumers = 313,
    /// 320: the server closed the connection (operator action or shutdown).
    ConnectionForced = 320,
    /// 402: invalid virtual host path.
    InvalidPath = 402,
    /// 403: access refused.
    AccessRefused = 403,
    /// 404: entity not found.
    NotFound = 404,
    /// 405: resource locked (exclusive queue of another connection).
    ResourceLocked = 405,
    /// 406: precondition failed.
    PreconditionFailed = 406,
    /// 501: malformed frame.
    FrameError = 501,
    /// 502: malformed method arguments.
    SyntaxError = 502,
    /// 503: invalid command.
    CommandInvalid = 503,
    /// 504: channel used wrongly (not open, already open).
    ChannelError = 504,
    /// 505: frame out of sequence.
    UnexpectedFrame = 505,
    /// 506: server out of resources.
    ResourceError = 506,
    /// 530: operation not allowed.
    NotAllowed = 530,
    /// 540: feature not implemented.
    NotImplemented = 540,
    /// 541: internal error.
    InternalError = 541,
}

impl ReplyCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code from its number, if known.
    pub fn from_code(code: u16) -> Option<ReplyCode> {
        use ReplyCode::*;
        Some(match code {
            200 => Success,
            311 => ContentTooLarge,
            312 => NoRoute,
            313 => NoConsumers,
            320 => ConnectionForced,
            402 => InvalidPath,
            403 => AccessRefused,
            404 => NotFound,
            405 => ResourceLocked,
            406 => PreconditionFailed,
            501 => FrameError,
            502 => SyntaxError,
            503 => CommandInvalid,
            504 => ChannelError,
            505 => UnexpectedFrame,
            506 => ResourceError,
            530 => NotAllowed,
            540 => NotImplemented,
            541 => InternalError,
            _ => return None,
        })
    }

    /// The upper-case name RabbitMQ puts in front of its reply texts, e.g. `NOT_FOUND`.
    pub fn name(self) -> &'static str {
        use ReplyCode::*;
        match self {
            Success => "OK",
            ContentTooLarge => "CONTENT_TOO_LARGE",
            NoRoute => "NO_ROUTE",
            NoConsumers => "NO_CONSUMERS",
            ConnectionForced => "CONNECTION_FORCED",
            InvalidPath => "INVALID_PATH",
            AccessRefused => "ACCESS_REFUSED",
            NotFound => "NOT_FOUND",
            ResourceLocked => "RESOURCE_LOCKED",
            PreconditionFailed => "PRECONDITION_FAILED",
            FrameError => "FRAME_ERROR",
            SyntaxError => "SYNTAX_ERROR",
            CommandInvalid => "COMMAND_INVALID",
            ChannelError => "CHANNEL_ERROR",
            UnexpectedFrame => "UNEXPECTED_FRAME",
            ResourceError => "RESOURCE_ERROR",
            NotAllowed => "NOT_ALLOWED",
            NotImplemented => "NOT_IMPLEMENTED",
            InternalError => "INTERNAL_ERROR",
        }
    }

    /// Whether the spec makes this a connection ("hard") error rather than a channel error.
    pub fn is_hard(self) -> bool {
        use ReplyCode::*;
        matches!(
            self,
            ConnectionForced
                | InvalidPath
                | FrameError
                | SyntaxError
                | CommandInvalid
                | ChannelError
                | UnexpectedFrame
                | ResourceError
                | NotAllowed
                | NotImplemented
                | InternalError
        )
    }

    /// `NAME - detail`, the reply text form RabbitMQ uses.
    pub fn text(self, detail: impl std::fmt::Display) -> String {
        format!("{} - {}", self.name(), detail)
    }
}
