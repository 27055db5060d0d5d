//! `market-seller`.

use clap::{Parser, Subcommand, ValueEnum};

use super::output::{emit, emit_done, item_table, items_table, rating_text};
use super::{CliError, Ctx, GlobalArgs, Interface};
use crate::api::{Condition, CreateAccount, Login, NewItem};
use crate::state::Role;
use crate::{ClientError, Replicas, SellerClient};

/// The command line of `market-seller`.
#[derive(Debug, Parser)]
#[command(
    name = "market-seller",
    version,
    about = "Seller client of the marketplace",
    after_help = "Exit codes: 0 ok, 1 refused by the server, 2 usage, 3 not logged in (401), \
                  4 no server answered, 5 local error."
)]
pub struct SellerArgs {
    /// Options of every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: SellerCommand,
}

/// An item's condition on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConditionArg {
    /// Brand new.
    New,
    /// Second hand.
    Used,
}

impl From<ConditionArg> for Condition {
    fn from(c: ConditionArg) -> Self {
        match c {
            ConditionArg::New => Condition::New,
            ConditionArg::Used => Condition::Used,
        }
    }
}

/// The subcommands of `market-seller`.
#[derive(Debug, Subcommand)]
pub enum SellerCommand {
    /// Create a seller account.
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
    /// Show your rating.
    Rating,
    /// Put an item up for sale.
    AddItem {
        /// Item name.
        #[arg(long)]
        name: String,
        /// Category, 0 to 9.
        #[arg(long)]
        category: i64,
        /// A keyword (repeat for up to 5).
        #[arg(long = "keyword", value_name = "KEYWORD")]
        keywords: Vec<String>,
        /// Condition.
        #[arg(long, value_enum)]
        condition: ConditionArg,
        /// Unit price in cents.
        #[arg(long)]
        price_cents: i64,
        /// Units for sale.
        #[arg(long)]
        quantity: i64,
    },
    /// Change an item's unit price.
    ChangePrice {
        /// Item id, e.g. 3-17.
        item: String,
        /// New unit price in cents.
        #[arg(long)]
        price_cents: i64,
    },
    /// Remove units of an item from sale (all of them without --quantity).
    RemoveItem {
        /// Item id.
        item: String,
        /// Units to remove.
        #[arg(long)]
        quantity: Option<i64>,
    },
    /// List your items, sold-out ones included.
    Items,
    /// Read commands line by line from stdin (the same syntax without the program name).
    Shell {
        /// Stop at the first failed command.
        #[arg(long)]
        fail_fast: bool,
    },
}

impl Interface for SellerClient {
    const ROLE: Role = Role::Seller;
    type Args = SellerArgs;
    type Command = SellerCommand;

    fn split(args: SellerArgs) -> (GlobalArgs, SellerCommand) {
        (args.global, args.command)
    }

    fn connect(replicas: Replicas) -> Self {
        SellerClient::from_replicas(replicas)
    }

    fn restore(&self, token: &str) -> Result<(), ClientError> {
        self.set_token(Some(token))
    }

    fn shell(cmd: &SellerCommand) -> Option<bool> {
        match cmd {
            SellerCommand::Shell { fail_fast } => Some(*fail_fast),
            _ => None,
        }
    }

    async fn exec(&self, cmd: SellerCommand, ctx: &Ctx) -> Result<(), CliError> {
        let json = ctx.json;
        match cmd {
            SellerCommand::CreateAccount {
                name,
                username,
                password,
            } => {
                let created = self
                    .create_seller(&CreateAccount {
                        name,
                        username,
                        password,
                    })
                    .await?;
                emit(json, &created, |c| {
                    format!("created seller {}\n", c.seller_id)
                });
            }
            SellerCommand::Login { username, password } => {
                let resp = self.login_seller(&Login { username, password }).await?;
                ctx.save_session(Role::Seller, &resp.token, resp.seller_id);
                emit(json, &resp, |r| {
                    format!("logged in as seller {}\n", r.seller_id)
                });
            }
            SellerCommand::Logout => {
                let result = self.logout_seller().await;
                if result.is_ok() || result.as_ref().is_err_and(ClientError::is_unauthenticated) {
                    ctx.forget_session(Role::Seller);
                }
                result?;
                emit_done(json, "logged out");
            }
            SellerCommand::Rating => {
                let rating = self.get_seller_rating().await?;
                emit(json, &rating, rating_text);
            }
            SellerCommand::AddItem {
                name,
                category,
                keywords,
                condition,
                price_cents,
                quantity,
            } => {
                let item = self
                    .add_item(&NewItem {
                        name,
                        category,
                        keywords,
                        condition: condition.into(),
                        price_cents,
                        quantity,
                    })
                    .await?;
                emit(json, &item, item_table);
            }
            SellerCommand::ChangePrice { item, price_cents } => {
                let item = self.change_price(&item, price_cents).await?;
                emit(json, &item, item_table);
            }
            SellerCommand::RemoveItem { item, quantity } => {
                let item = self.remove_item(&item, quantity).await?;
                emit(json, &item, item_table);
            }
            SellerCommand::Items => {
                let items = self.all_items_by_seller().await?;
                emit(json, &items, |i| items_table(&i.items));
            }
            SellerCommand::Shell { .. } => {
                return Err(CliError::Local("already in the shell".into()));
            }
        }
        Ok(())
    }
}

/// `market-seller`'s `main`.
pub fn seller_main() -> std::process::ExitCode {
    super::main::<SellerClient>()
}
