//! `market-buyer`.

use clap::{Parser, Subcommand, ValueEnum};

use super::output::{
    cart_text, emit, emit_done, item_table, items_table, purchase_text, purchases_text, rating_text,
};
use super::{CliError, Ctx, GlobalArgs, Interface};
use crate::api::{Card, CreateAccount, Login, SearchQuery, Vote};
use crate::state::Role;
use crate::{BuyerClient, ClientError, Replicas};

/// The command line of `market-buyer`.
#[derive(Debug, Parser)]
#[command(
    name = "market-buyer",
    version,
    about = "Buyer client of the marketplace",
    after_help = "Exit codes: 0 ok, 1 refused by the server, 2 usage, 3 not logged in (401), \
                  4 no server answered, 5 local error."
)]
pub struct BuyerArgs {
    /// Options of every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: BuyerCommand,
}

/// A vote on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VoteArg {
    /// Thumbs up.
    Up,
    /// Thumbs down.
    Down,
}

impl From<VoteArg> for Vote {
    fn from(v: VoteArg) -> Self {
        match v {
            VoteArg::Up => Vote::Up,
            VoteArg::Down => Vote::Down,
        }
    }
}

/// The subcommands of `market-buyer`.
#[derive(Debug, Subcommand)]
pub enum BuyerCommand {
    /// Create a buyer account.
    CreateAccount {
        /// Display name.
        #[arg(long)]
        name: String,
        /// Login name.
        #[arg(long)]
        username: String,
        /// Password (8 to 128 characters).
        #[arg(long, env = "MARKET_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Log in; the session is kept in the state directory for the next commands.
    Login {
        /// Login name.
        #[arg(long)]
        username: String,
        /// Password.
        #[arg(long, env = "MARKET_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Log out and forget the saved session.
    Logout,
    /// Search items on sale.
    Search {
        /// Only this category (0 to 9).
        #[arg(long)]
        category: Option<i64>,
        /// A keyword (repeat for up to 5).
        #[arg(long = "keyword", value_name = "KEYWORD")]
        keywords: Vec<String>,
        /// At most this many items (1 to 500, default 50).
        #[arg(long)]
        limit: Option<i64>,
    },
    /// Show one item.
    Item {
        /// Item id, e.g. 3-17.
        id: String,
    },
    /// Show the cart.
    Cart,
    /// Add units of an item to the cart.
    AddToCart {
        /// Item id.
        item: String,
        /// Units to add.
        #[arg(long, default_value_t = 1)]
        quantity: i64,
    },
    /// Remove units of an item from the cart (the whole line without --quantity).
    RemoveFromCart {
        /// Item id.
        item: String,
        /// Units to remove.
        #[arg(long)]
        quantity: Option<i64>,
    },
    /// Empty the cart (working and saved).
    ClearCart,
    /// Save the cart, so it survives logout.
    SaveCart,
    /// Buy the whole cart.
    Purchase {
        /// Card holder's name.
        #[arg(long)]
        card_name: String,
        /// Card number.
        #[arg(long)]
        card_number: String,
        /// Expiry, MM/YY.
        #[arg(long)]
        expiry: String,
        /// Security code.
        #[arg(long)]
        cvv: String,
    },
    /// List your purchases, newest first.
    History,
    /// Vote on an item you bought (once).
    Feedback {
        /// Item id.
        item: String,
        /// up or down.
        #[arg(value_enum)]
        vote: VoteArg,
    },
    /// Show a seller's rating.
    SellerRating {
        /// Seller id.
        seller_id: u64,
    },
    /// Read commands line by line from stdin (the same syntax without the program name).
    Shell {
        /// Stop at the first failed command.
        #[arg(long)]
        fail_fast: bool,
    },
}

impl Interface for BuyerClient {
    const ROLE: Role = Role::Buyer;
    type Args = BuyerArgs;
    type Command = BuyerCommand;

    fn split(args: BuyerArgs) -> (GlobalArgs, BuyerCommand) {
        (args.global, args.command)
    }

    fn connect(replicas: Replicas) -> Self {
        BuyerClient::from_replicas(replicas)
    }

    fn restore(&self, token: &str) -> Result<(), ClientError> {
        self.set_token(Some(token))
    }

    fn shell(cmd: &BuyerCommand) -> Option<bool> {
        match cmd {
            BuyerCommand::Shell { fail_fast } => Some(*fail_fast),
            _ => None,
        }
    }

    async fn exec(&self, cmd: BuyerCommand, ctx: &Ctx) -> Result<(), CliError> {
        let json = ctx.json;
        match cmd {
            BuyerCommand::CreateAccount {
                name,
                username,
                password,
            } => {
                let created = self
                    .create_buyer(&CreateAccount {
                        name,
                        username,
                        password,
                    })
                    .await?;
                emit(json, &created, |c| {
                    format!("created buyer {}\n", c.buyer_id)
                });
            }
            BuyerCommand::Login { username, password } => {
                let resp = self.login_buyer(&Login { username, password }).await?;
                ctx.save_session(Role::Buyer, &resp.token, resp.buyer_id);
                emit(json, &resp, |r| {
                    format!("logged in as buyer {}\n", r.buyer_id)
                });
            }
            BuyerCommand::Logout => {
                let result = self.logout_buyer().await;
                if result.is_ok() || result.as_ref().is_err_and(ClientError::is_unauthenticated) {
                    ctx.forget_session(Role::Buyer);
                }
                result?;
                emit_done(json, "logged out");
            }
            BuyerCommand::Search {
                category,
                keywords,
                limit,
            } => {
                let query = SearchQuery {
                    category,
                    keywords,
                    limit,
                };
                let items = self.search_items(&query).await?;
                emit(json, &items, |i| items_table(&i.items));
            }
            BuyerCommand::Item { id } => {
                let item = self.get_item(&id).await?;
                emit(json, &item, item_table);
            }
            BuyerCommand::Cart => {
                let cart = self.display_cart().await?;
                emit(json, &cart, cart_text);
            }
            BuyerCommand::AddToCart { item, quantity } => {
                let cart = self.add_to_cart(&item, quantity).await?;
                emit(json, &cart, cart_text);
            }
            BuyerCommand::RemoveFromCart { item, quantity } => {
                let cart = self.remove_cart(&item, quantity).await?;
                emit(json, &cart, cart_text);
            }
            BuyerCommand::ClearCart => {
                self.clear_cart().await?;
                emit_done(json, "cart cleared");
            }
            BuyerCommand::SaveCart => {
                self.save_cart().await?;
                emit_done(json, "cart saved");
            }
            BuyerCommand::Purchase {
                card_name,
                card_number,
                expiry,
                cvv,
            } => {
                let card = Card {
                    name: card_name,
                    number: card_number,
                    expiry,
                    cvv,
                };
                let purchase = self.make_purchase(&card).await?;
                emit(json, &purchase, purchase_text);
            }
            BuyerCommand::History => {
                let history = self.get_purchase_history().await?;
                emit(json, &history, |h| purchases_text(&h.purchases));
            }
            BuyerCommand::Feedback { item, vote } => {
                self.provide_feedback(&item, vote.into()).await?;
                emit_done(json, "feedback recorded");
            }
            BuyerCommand::SellerRating { seller_id } => {
                let rating = self.get_seller_rating(seller_id).await?;
                emit(json, &rating, rating_text);
            }
            BuyerCommand::Shell { .. } => {
                return Err(CliError::Local("already in the shell".into()));
            }
        }
        Ok(())
    }
}

/// `market-buyer`'s `main`.
pub fn buyer_main() -> std::process::ExitCode {
    super::main::<BuyerClient>()
}
